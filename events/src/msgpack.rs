//! The few MessagePack forms a stored record is made of, written and read
//! by hand: unsigned and signed integers, strings, binaries, nil and array
//! headers. The record layout is fixed (see [`crate::record`]), so a direct
//! reader knows every field's byte range — which is what lets `verify` hash
//! and check signatures over the stored bytes without re-encoding them —
//! and it is several times faster than a generic deserializer.
//!
//! The writer always picks the shortest form; the reader accepts every
//! valid form (a record's hashes cover its bytes, whatever their form).

/// Why bytes are not the MessagePack form expected at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError {
    /// Byte offset of the bad value.
    pub at: usize,
    /// What was expected there.
    pub expected: &'static str,
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "expected {} at byte {}", self.expected, self.at)
    }
}

/// Writes canonical (shortest) MessagePack forms into a buffer.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// A writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    /// An array header for `n` elements.
    pub fn array(&mut self, n: u32) {
        if n < 16 {
            self.buf.push(0x90 | n as u8);
        } else if n <= u16::MAX as u32 {
            self.buf.push(0xdc);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xdd);
            self.buf.extend_from_slice(&n.to_be_bytes());
        }
    }

    /// An unsigned integer.
    pub fn uint(&mut self, v: u64) {
        if v < 0x80 {
            self.buf.push(v as u8);
        } else if v <= u8::MAX as u64 {
            self.buf.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= u16::MAX as u64 {
            self.buf.push(0xcd);
            self.buf.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= u32::MAX as u64 {
            self.buf.push(0xce);
            self.buf.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.buf.push(0xcf);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A signed integer (non-negative values use the unsigned forms).
    pub fn int(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else if v >= -32 {
            self.buf.push(v as i8 as u8);
        } else if v >= i8::MIN as i64 {
            self.buf.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= i16::MIN as i64 {
            self.buf.push(0xd1);
            self.buf.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= i32::MIN as i64 {
            self.buf.push(0xd2);
            self.buf.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            self.buf.push(0xd3);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A UTF-8 string.
    pub fn str(&mut self, s: &str) {
        let n = s.len();
        if n < 32 {
            self.buf.push(0xa0 | n as u8);
        } else if n <= u8::MAX as usize {
            self.buf.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= u16::MAX as usize {
            self.buf.push(0xda);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xdb);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A binary.
    pub fn bin(&mut self, b: &[u8]) {
        let n = b.len();
        if n <= u8::MAX as usize {
            self.buf.extend_from_slice(&[0xc4, n as u8]);
        } else if n <= u16::MAX as usize {
            self.buf.push(0xc5);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xc6);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
        self.buf.extend_from_slice(b);
    }

    /// Nil.
    pub fn nil(&mut self) {
        self.buf.push(0xc0);
    }

    /// Bytes that already are MessagePack (a nested value).
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Reads MessagePack forms from a slice, borrowing strings and binaries.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// The current byte offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn err(&self, expected: &'static str) -> FormError {
        FormError {
            at: self.pos,
            expected,
        }
    }

    fn take(&mut self, n: usize, expected: &'static str) -> Result<&'a [u8], FormError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.err(expected))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn be(&mut self, n: usize, expected: &'static str) -> Result<u64, FormError> {
        Ok(self
            .take(n, expected)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// A container header: a fix form (`fix_base` | count in the low bits
    /// `fix_mask`), or a 16- or 32-bit count after `long16` / `long32`.
    fn header(
        &mut self,
        fix_base: u8,
        fix_mask: u8,
        long16: u8,
        long32: u8,
        expected: &'static str,
    ) -> Result<u32, FormError> {
        let b = self.peek().ok_or_else(|| self.err(expected))?;
        if b & !fix_mask == fix_base {
            self.pos += 1;
            return Ok(u32::from(b & fix_mask));
        }
        let n = if b == long16 {
            2
        } else if b == long32 {
            4
        } else {
            return Err(self.err(expected));
        };
        self.pos += 1;
        Ok(self.be(n, expected)? as u32)
    }

    /// An array header; returns the element count.
    pub fn array(&mut self) -> Result<u32, FormError> {
        self.header(0x90, 0x0f, 0xdc, 0xdd, "an array")
    }

    /// A map header; returns the entry count.
    pub fn map(&mut self) -> Result<u32, FormError> {
        self.header(0x80, 0x0f, 0xde, 0xdf, "a map")
    }

    /// A 64- or 32-bit float.
    pub fn f64(&mut self) -> Result<f64, FormError> {
        const E: &str = "a float";
        match self.peek() {
            Some(0xcb) => {
                self.pos += 1;
                Ok(f64::from_bits(self.be(8, E)?))
            }
            Some(0xca) => {
                self.pos += 1;
                Ok(f64::from(f32::from_bits(self.be(4, E)? as u32)))
            }
            _ => Err(self.err(E)),
        }
    }

    /// An unsigned integer (a negative one is an error).
    pub fn uint(&mut self) -> Result<u64, FormError> {
        const E: &str = "an unsigned integer";
        let b = self.peek().ok_or_else(|| self.err(E))?;
        let start = self.pos;
        self.pos += 1;
        let v = match b {
            0x00..=0x7f => u64::from(b),
            0xcc => self.be(1, E)?,
            0xcd => self.be(2, E)?,
            0xce => self.be(4, E)?,
            0xcf => self.be(8, E)?,
            0xd0..=0xd3 => {
                let n = 1 << (b - 0xd0);
                let raw = self.be(n, E)?;
                let shift = 64 - 8 * n as u32;
                let v = ((raw << shift) as i64) >> shift;
                u64::try_from(v).map_err(|_| FormError {
                    at: start,
                    expected: E,
                })?
            }
            _ => {
                self.pos = start;
                return Err(self.err(E));
            }
        };
        Ok(v)
    }

    /// An unsigned integer that fits `u32`.
    pub fn u32(&mut self) -> Result<u32, FormError> {
        let at = self.pos;
        u32::try_from(self.uint()?).map_err(|_| FormError {
            at,
            expected: "an integer below 2^32",
        })
    }

    /// An unsigned integer that fits `u16`.
    pub fn u16(&mut self) -> Result<u16, FormError> {
        let at = self.pos;
        u16::try_from(self.uint()?).map_err(|_| FormError {
            at,
            expected: "an integer below 2^16",
        })
    }

    /// A signed integer.
    pub fn int(&mut self) -> Result<i64, FormError> {
        const E: &str = "an integer";
        let b = self.peek().ok_or_else(|| self.err(E))?;
        let start = self.pos;
        match b {
            0xe0..=0xff => {
                self.pos += 1;
                Ok(i64::from(b as i8))
            }
            0xd0..=0xd3 => {
                self.pos += 1;
                let n = 1 << (b - 0xd0);
                let raw = self.be(n, E)?;
                let shift = 64 - 8 * n as u32;
                Ok(((raw << shift) as i64) >> shift)
            }
            _ => {
                let v = self.uint()?;
                i64::try_from(v).map_err(|_| FormError {
                    at: start,
                    expected: E,
                })
            }
        }
    }

    /// A UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, FormError> {
        const E: &str = "a string";
        let b = self.peek().ok_or_else(|| self.err(E))?;
        let start = self.pos;
        self.pos += 1;
        let n = match b {
            0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.be(1, E)? as usize,
            0xda => self.be(2, E)? as usize,
            0xdb => self.be(4, E)? as usize,
            _ => {
                self.pos = start;
                return Err(self.err(E));
            }
        };
        let bytes = self.take(n, E)?;
        std::str::from_utf8(bytes).map_err(|_| FormError {
            at: start,
            expected: "a UTF-8 string",
        })
    }

    /// A binary.
    pub fn bin(&mut self) -> Result<&'a [u8], FormError> {
        const E: &str = "a binary";
        let b = self.peek().ok_or_else(|| self.err(E))?;
        let start = self.pos;
        self.pos += 1;
        let n = match b {
            0xc4 => self.be(1, E)? as usize,
            0xc5 => self.be(2, E)? as usize,
            0xc6 => self.be(4, E)? as usize,
            _ => {
                self.pos = start;
                return Err(self.err(E));
            }
        };
        self.take(n, E)
    }

    /// A binary of exactly `N` bytes.
    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], FormError> {
        let at = self.pos;
        self.bin()?.try_into().map_err(|_| FormError {
            at,
            expected: "a binary of the fixed size",
        })
    }

    /// Consumes a nil if one is next; returns whether it did.
    pub fn nil(&mut self) -> bool {
        if self.peek() == Some(0xc0) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_in_the_shortest_form_and_match_rmp() {
        for v in [
            0u64,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut w = Writer::default();
            w.uint(v);
            assert_eq!(w.buf, rmp_serde::to_vec(&v).unwrap(), "{v}");
            assert_eq!(Reader::new(&w.buf).uint().unwrap(), v);
        }
        for v in [
            0i64,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            i32::MIN as i64,
            i64::MIN,
            5,
            i64::MAX,
        ] {
            let mut w = Writer::default();
            w.int(v);
            assert_eq!(Reader::new(&w.buf).int().unwrap(), v, "{v}");
        }
        // rmp's other forms read the same.
        for v in [7i64, 300, -5, 1_800_000_000_000_000_000] {
            let bytes = rmp_serde::to_vec(&v).unwrap();
            assert_eq!(Reader::new(&bytes).int().unwrap(), v);
        }
    }

    #[test]
    fn strings_binaries_and_arrays_round_trip() {
        for n in [0usize, 31, 32, 255, 256, 70_000] {
            let s = "x".repeat(n);
            let mut w = Writer::default();
            w.str(&s);
            w.bin(s.as_bytes());
            w.array(n as u32);
            w.nil();
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.str().unwrap(), s);
            assert_eq!(r.bin().unwrap(), s.as_bytes());
            assert_eq!(r.array().unwrap(), n as u32);
            assert!(r.nil());
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn short_or_wrong_input_is_an_error_not_a_panic() {
        assert!(Reader::new(&[]).uint().is_err());
        assert!(Reader::new(&[0xcf, 1]).uint().is_err());
        assert!(Reader::new(&[0xd9, 5, b'a']).str().is_err());
        assert!(Reader::new(&[0xa2, 0xff, 0xfe]).str().is_err());
        assert!(Reader::new(&[0xc6, 0xff, 0xff, 0xff, 0xff]).bin().is_err());
        assert!(Reader::new(&[0xff]).uint().is_err());
        assert!(Reader::new(&[0xa1, b'x']).uint().is_err());
        assert!(!Reader::new(&[0x01]).nil());
    }
}
