//! Drawing: text with the bundled fonts (ab_glyph), rules, paper noise, skew
//! and PNG encoding. Everything is integer-positioned and single-threaded per
//! document, so the bytes depend only on the inputs.

use std::collections::HashMap;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{GrayImage, ImageEncoder, Luma};

use crate::rng::Rng;

/// The bundled fonts (DejaVu, Bitstream Vera license: fonts/LICENSE-DejaVu.txt).
const FONT_BYTES: [&[u8]; 3] = [
    include_bytes!("../fonts/DejaVuSansMono.ttf"),
    include_bytes!("../fonts/DejaVuSansMono-Bold.ttf"),
    include_bytes!("../fonts/DejaVuSerif.ttf"),
];

/// Which bundled font.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FontId {
    /// DejaVu Sans Mono.
    Mono = 0,
    /// DejaVu Sans Mono Bold.
    MonoBold = 1,
    /// DejaVu Serif.
    Serif = 2,
}

fn fonts() -> &'static [Option<FontRef<'static>>; 3] {
    static FONTS: OnceLock<[Option<FontRef<'static>>; 3]> = OnceLock::new();
    FONTS.get_or_init(|| FONT_BYTES.map(|b| FontRef::try_from_slice(b).ok()))
}

/// A rasterized glyph: coverage bitmap and its offset from the pen position.
struct Glyph {
    dx: i32,
    dy: i32,
    w: u32,
    h: u32,
    cov: Vec<u8>,
}

type Cache = HashMap<(FontId, u32, char), Option<Glyph>>;

fn glyph(cache: &mut Cache, font: FontId, px: f32, c: char) -> Option<&Glyph> {
    let key = (font, (px * 8.0).round() as u32, c);
    cache
        .entry(key)
        .or_insert_with(|| {
            let f = fonts()[font as usize].as_ref()?;
            let g = f
                .glyph_id(c)
                .with_scale_and_position(PxScale::from(px), ab_glyph::point(0.0, 0.0));
            let og = f.outline_glyph(g)?;
            let b = og.px_bounds();
            let (w, h) = (b.width() as u32, b.height() as u32);
            let mut cov = vec![0u8; (w * h) as usize];
            og.draw(|x, y, v| {
                if x < w && y < h {
                    cov[(y * w + x) as usize] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            });
            Some(Glyph {
                dx: b.min.x as i32,
                dy: b.min.y as i32,
                w,
                h,
                cov,
            })
        })
        .as_ref()
}

/// A grayscale page with a glyph cache.
pub(crate) struct Canvas {
    pub img: GrayImage,
    ink: u8,
    cache: Cache,
    /// Every string drawn, in drawing order (the page's transcription).
    pub drawn: Vec<String>,
    /// The centre (x, y) of every character drawn, in the same order: where a
    /// reading model should look for it.
    pub centres: Vec<[i32; 2]>,
}

impl Canvas {
    /// A blank page of `paper` gray, drawing with `ink`.
    pub fn new(w: u32, h: u32, paper: u8, ink: u8) -> Self {
        Canvas {
            img: GrayImage::from_pixel(w.max(1), h.max(1), Luma([paper])),
            ink,
            cache: HashMap::new(),
            drawn: Vec::new(),
            centres: Vec::new(),
        }
    }

    /// Width of the page.
    pub fn width(&self) -> u32 {
        self.img.width()
    }

    /// Horizontal advance of `text` at `px`.
    pub fn measure(&self, text: &str, font: FontId, px: f32) -> i32 {
        let Some(f) = &fonts()[font as usize] else {
            return 0;
        };
        let sf = f.as_scaled(PxScale::from(px));
        let mut w = 0.0f32;
        let mut prev: Option<GlyphId> = None;
        for c in text.chars() {
            let g = f.glyph_id(c);
            if let Some(p) = prev {
                w += sf.kern(p, g);
            }
            w += sf.h_advance(g);
            prev = Some(g);
        }
        w.round() as i32
    }

    /// Line height at `px`.
    pub fn line_height(&self, font: FontId, px: f32) -> i32 {
        match &fonts()[font as usize] {
            Some(f) => f.as_scaled(PxScale::from(px)).height().ceil() as i32,
            None => px.ceil() as i32,
        }
    }

    /// Draws `text` with its top-left corner at (x, y); returns its width.
    pub fn text(&mut self, x: i32, y: i32, text: &str, font: FontId, px: f32) -> i32 {
        let Some(f) = &fonts()[font as usize] else {
            return 0;
        };
        let sf = f.as_scaled(PxScale::from(px));
        let baseline = y + sf.ascent().round() as i32;
        let mut pen = x as f32;
        let mut prev: Option<GlyphId> = None;
        self.drawn.push(text.to_string());
        let mid_y = y + (sf.ascent() * 0.6).round() as i32;
        let Canvas {
            img,
            ink,
            cache,
            centres,
            ..
        } = self;
        let ink = i32::from(*ink);
        let (iw, ih) = (img.width() as i32, img.height() as i32);
        for c in text.chars() {
            let gid = f.glyph_id(c);
            if let Some(p) = prev {
                pen += sf.kern(p, gid);
            }
            let ox = pen.round() as i32;
            pen += sf.h_advance(gid);
            centres.push([((ox as f32 + pen) / 2.0).round() as i32, mid_y]);
            prev = Some(gid);
            let Some(g) = glyph(cache, font, px, c) else {
                continue;
            };
            let (gx, gy, gw, gh) = (ox + g.dx, baseline + g.dy, g.w as i32, g.h as i32);
            for yy in 0..gh {
                let py = gy + yy;
                if py < 0 || py >= ih {
                    continue;
                }
                for xx in 0..gw {
                    let qx = gx + xx;
                    if qx < 0 || qx >= iw {
                        continue;
                    }
                    let a = i32::from(g.cov[(yy * gw + xx) as usize]);
                    if a == 0 {
                        continue;
                    }
                    let p = img.get_pixel_mut(qx as u32, py as u32);
                    let bg = i32::from(p.0[0]);
                    p.0[0] = (bg + (ink - bg) * a / 255) as u8;
                }
            }
        }
        (pen - x as f32).round() as i32
    }

    /// A filled rectangle (rules and boxes).
    pub fn fill(&mut self, x: i32, y: i32, w: i32, h: i32, gray: u8) {
        let (iw, ih) = (self.img.width() as i32, self.img.height() as i32);
        for py in y.max(0)..(y + h).min(ih) {
            for px in x.max(0)..(x + w).min(iw) {
                self.img.put_pixel(px as u32, py as u32, Luma([gray]));
            }
        }
    }

    /// A horizontal rule.
    pub fn hline(&mut self, x0: i32, x1: i32, y: i32, thick: i32) {
        let ink = self.ink;
        self.fill(x0, y, x1 - x0, thick, ink);
    }

    /// Light noise: per-pixel jitter of up to `amp` levels and a few specks.
    pub fn noise(&mut self, r: &mut Rng, level: f32) {
        if level <= 0.0 {
            return;
        }
        let amp = (level * 24.0).round() as i64;
        if amp > 0 {
            for p in self.img.pixels_mut() {
                let bits = r.next_u64();
                let j = (bits % (2 * amp as u64 + 1)) as i64 - amp;
                p.0[0] = (i64::from(p.0[0]) + j).clamp(0, 255) as u8;
            }
        }
        let (w, h) = (self.img.width() as i64, self.img.height() as i64);
        let specks = ((w * h) as f32 * level * 0.0015) as i64;
        for _ in 0..specks {
            let x = r.range(0, w - 1) as u32;
            let y = r.range(0, h - 1) as u32;
            let g = r.range(40, 160) as u8;
            self.img.put_pixel(x, y, Luma([g]));
        }
    }

    /// Rotates the page by `deg` degrees about its center (bilinear), filling
    /// uncovered corners with `paper`.
    pub fn skew(&mut self, deg: f32, paper: u8) {
        if deg.abs() < 0.01 {
            return;
        }
        let (w, h) = (self.img.width(), self.img.height());
        let (s, c) = deg.to_radians().sin_cos();
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        let src = &self.img;
        let mut out = GrayImage::new(w, h);
        for y in 0..h {
            let fy = y as f32 - cy;
            for x in 0..w {
                let fx = x as f32 - cx;
                let sx = c * fx + s * fy + cx;
                let sy = -s * fx + c * fy + cy;
                let x0 = sx.floor();
                let y0 = sy.floor();
                let (ax, ay) = (sx - x0, sy - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let at = |xx: i64, yy: i64| -> f32 {
                    if xx < 0 || yy < 0 || xx >= w as i64 || yy >= h as i64 {
                        f32::from(paper)
                    } else {
                        f32::from(src.get_pixel(xx as u32, yy as u32).0[0])
                    }
                };
                let v = (at(x0, y0) * (1.0 - ax) + at(x0 + 1, y0) * ax) * (1.0 - ay)
                    + (at(x0, y0 + 1) * (1.0 - ax) + at(x0 + 1, y0 + 1) * ax) * ay;
                out.put_pixel(x, y, Luma([v.round().clamp(0.0, 255.0) as u8]));
            }
        }
        self.img = out;
    }

    /// PNG bytes (8-bit gray, fast deflate).
    pub fn png(&self) -> Result<Vec<u8>, image::ImageError> {
        let mut out = Vec::new();
        PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
            .write_image(
                self.img.as_raw(),
                self.img.width(),
                self.img.height(),
                image::ExtendedColorType::L8,
            )?;
        Ok(out)
    }
}
