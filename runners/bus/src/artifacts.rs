//! Artifact files over JetStream's object store: how a checkpoint written on
//! one machine reaches `ledger serve`'s home and every runner, with no
//! shared disk.
//!
//! The bucket [`BUCKET`] holds one object per file, named by its sha256
//! (hex). Objects are written in the object store's own format (chunks on
//! `$O.<bucket>.C.<nuid>`, then the metadata with a rollup on
//! `$O.<bucket>.M.<name>`), so any NATS client or `nats object get` reads
//! them. Foundry writes the chunks itself rather than through
//! `ObjectStore::put` for one reason: an upload must be resumable and
//! idempotent. The chunk subject is derived from the digest and a
//! generation (bumped only after a delete), each chunk carries a
//! `Nats-Msg-Id` of its index, and chunks are acknowledged in order, so a
//! writer killed midway leaves a prefix of chunks and no metadata (no object
//! a reader could see), and the next upload of the same file continues after
//! that prefix; two writers of the same file at once are deduplicated by the
//! stream. A file is whole once its metadata is acknowledged.
//!
//! Readers never trust the bucket: [`ArtifactBucket::fetch`] streams an
//! object into the home's staging file, hashing it as it goes, and installs
//! it only if it hashes to the digest asked for.

use std::collections::VecDeque;
use std::path::Path;

use async_nats::jetstream::{self, context::Context, object_store, stream};
use async_nats::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use bytes::Bytes;
use foundry_events::Sha256Digest;
use foundry_ledger::ArtifactStore;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::BusError;

/// The object store bucket that carries artifact files.
pub const BUCKET: &str = "FOUNDRY_ARTIFACTS";
/// Bytes per chunk: well under NATS's default 1 MiB max payload.
pub const CHUNK: usize = 512 * 1024;
/// Chunks published before the oldest acknowledgement is awaited.
const WINDOW: usize = 8;

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploaded {
    /// The bucket already held the file whole.
    AlreadyThere,
    /// Written: `resumed_at` chunks were already there from an earlier,
    /// interrupted upload; `chunks` is the object's total.
    Written {
        /// Chunks found from an interrupted upload and kept.
        resumed_at: usize,
        /// Chunks of the whole object.
        chunks: usize,
    },
}

/// The artifact bucket on one JetStream.
#[derive(Clone)]
pub struct ArtifactBucket {
    js: Context,
    store: object_store::ObjectStore,
    stream: stream::Stream,
}

fn js_err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::JetStream(format!("artifact bucket {BUCKET}: {what}: {e}"))
}

/// The object store's digest string for a sha256.
fn nats_digest(d: &Sha256Digest) -> String {
    format!("SHA-256={}", URL_SAFE.encode(d.0))
}

impl ArtifactBucket {
    /// Opens the bucket, creating it (file storage) on first use.
    pub async fn open(js: &Context) -> Result<ArtifactBucket, BusError> {
        let store = match js.get_object_store(BUCKET).await {
            Ok(s) => s,
            Err(_) => match js
                .create_object_store(object_store::Config {
                    bucket: BUCKET.to_string(),
                    description: Some("Foundry artifact files, one object per sha256 (hex)".into()),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => s,
                // Someone else created it meanwhile.
                Err(e) => js
                    .get_object_store(BUCKET)
                    .await
                    .map_err(|_| js_err("cannot create it", e))?,
            },
        };
        let stream = js
            .get_stream(format!("OBJ_{BUCKET}"))
            .await
            .map_err(|e| js_err("cannot open its stream", e))?;
        Ok(ArtifactBucket {
            js: js.clone(),
            store,
            stream,
        })
    }

    /// Opens the bucket on a connected client.
    pub async fn on(client: async_nats::Client) -> Result<ArtifactBucket, BusError> {
        ArtifactBucket::open(&jetstream::new(client)).await
    }

    async fn info(
        &self,
        digest: &Sha256Digest,
    ) -> Result<Option<object_store::ObjectInfo>, BusError> {
        match self.store.info(digest.to_hex()).await {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(js_err(&format!("info of {}", digest.short()), e)),
        }
    }

    /// True if the bucket holds `digest` whole (by its metadata; fetching
    /// checks the bytes).
    pub async fn contains(&self, digest: &Sha256Digest) -> Result<bool, BusError> {
        Ok(self
            .info(digest)
            .await?
            .is_some_and(|i| !i.deleted && i.digest.as_deref() == Some(&nats_digest(digest))))
    }

    /// Uploads the file at `path`, whose sha256 is `digest`, unless the
    /// bucket holds it already; continues an interrupted upload of the same
    /// file. The file must not change meanwhile (artifact store files never
    /// do): the object's metadata names `digest`, and readers check it.
    pub async fn upload(&self, digest: &Sha256Digest, path: &Path) -> Result<Uploaded, BusError> {
        let hex = digest.to_hex();
        let previous = self.info(digest).await?;
        let generation = match &previous {
            Some(i) if !i.deleted && i.digest.as_deref() == Some(&nats_digest(digest)) => {
                return Ok(Uploaded::AlreadyThere)
            }
            // Deleted, or (written by someone else) other bytes: a new
            // generation, so no chunk id can collide with the old ones.
            Some(i) => generation_of(&i.nuid, &hex) + 1,
            None => 0,
        };
        let nuid = format!("{hex}-{generation}");
        let chunk_subject = format!("$O.{BUCKET}.C.{nuid}");
        let io = |e: std::io::Error| {
            BusError::JetStream(format!(
                "artifact {}: {}: {e}",
                digest.short(),
                path.display()
            ))
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len() as usize;
        let chunks = size.div_ceil(CHUNK);
        let resumed_at = self.chunks_stored(&chunk_subject).await?;
        if resumed_at > chunks {
            return Err(js_err(
                &format!("upload of {}", digest.short()),
                format!(
                    "{chunk_subject} holds {resumed_at} chunks, more than the file's {chunks}; purge that subject"
                ),
            ));
        }
        file.seek(std::io::SeekFrom::Start((resumed_at * CHUNK) as u64))
            .await
            .map_err(io)?;
        let mut acks = VecDeque::new();
        let mut buf = vec![0u8; CHUNK];
        for index in resumed_at..chunks {
            let want = CHUNK.min(size - index * CHUNK);
            file.read_exact(&mut buf[..want]).await.map_err(io)?;
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                HeaderValue::from(format!("{nuid}-{index}").as_str()),
            );
            let ack = self
                .js
                .publish_with_headers(
                    chunk_subject.clone(),
                    headers,
                    Bytes::copy_from_slice(&buf[..want]),
                )
                .await
                .map_err(|e| js_err(&format!("chunk {index} of {}", digest.short()), e))?;
            acks.push_back((index, ack));
            if acks.len() >= WINDOW {
                await_ack(acks.pop_front(), digest).await?;
            }
        }
        while let Some(a) = acks.pop_front() {
            await_ack(Some(a), digest).await?;
        }
        let info = object_store::ObjectInfo {
            name: hex.clone(),
            description: None,
            metadata: [("sha256".to_string(), hex.clone())].into_iter().collect(),
            headers: None,
            options: Some(object_store::ObjectOptions {
                max_chunk_size: Some(CHUNK),
                link: None,
            }),
            bucket: BUCKET.to_string(),
            nuid,
            size,
            chunks,
            modified: Some(time::OffsetDateTime::now_utc()),
            digest: Some(nats_digest(digest)),
            deleted: false,
        };
        let meta = serde_json::to_vec(&info).map_err(|e| js_err("object metadata", e))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", HeaderValue::from("sub"));
        self.js
            .publish_with_headers(
                format!("$O.{BUCKET}.M.{}", URL_SAFE.encode(&hex)),
                headers,
                meta.into(),
            )
            .await
            .map_err(|e| js_err(&format!("metadata of {}", digest.short()), e))?
            .await
            .map_err(|e| js_err(&format!("metadata of {}", digest.short()), e))?;
        // Bytes of an older generation (other bytes under this name) go.
        if let Some(old) = previous.filter(|i| !i.nuid.is_empty()) {
            let _ = self
                .stream
                .purge()
                .filter(format!("$O.{BUCKET}.C.{}", old.nuid))
                .await;
        }
        Ok(Uploaded::Written { resumed_at, chunks })
    }

    /// How many chunks an interrupted upload left on `subject`, checked to
    /// be the prefix this writer would have written.
    async fn chunks_stored(&self, subject: &str) -> Result<usize, BusError> {
        let mut subjects = self
            .stream
            .info_with_subjects(subject)
            .await
            .map_err(|e| js_err(&format!("chunks on {subject}"), e))?;
        let mut count = 0;
        while let Some(s) = subjects.next().await {
            let (name, n) = s.map_err(|e| js_err(&format!("chunks on {subject}"), e))?;
            if name == subject {
                count = n;
            }
        }
        if count == 0 {
            return Ok(0);
        }
        let last = self
            .stream
            .get_last_raw_message_by_subject(subject)
            .await
            .map_err(|e| js_err(&format!("last chunk on {subject}"), e))?;
        let id = last
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let expected = format!("-{}", count - 1);
        if !id.ends_with(&expected) {
            return Err(js_err(
                &format!("chunks on {subject}"),
                format!(
                    "{count} chunks whose last is {id:?}, not chunk {}; purge that subject",
                    count - 1
                ),
            ));
        }
        Ok(count)
    }

    /// Brings `digest` into `store`: streamed into the store's staging file,
    /// installed only if it hashes to `digest`. `Ok(false)` when the bucket
    /// does not hold it.
    pub async fn fetch(
        &self,
        digest: &Sha256Digest,
        store: &ArtifactStore,
    ) -> Result<bool, BusError> {
        if store.contains(digest) {
            return Ok(true);
        }
        let Some(info) = self.info(digest).await? else {
            return Ok(false);
        };
        if info.deleted {
            return Ok(false);
        }
        let mut object = match self.store.get(digest.to_hex()).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(js_err(&format!("get {}", digest.short()), e)),
        };
        let staged = store.staging_path(digest)?;
        let io = |e: std::io::Error| {
            BusError::JetStream(format!(
                "artifact {}: {}: {e}",
                digest.short(),
                staged.display()
            ))
        };
        let file = tokio::fs::File::create(&staged).await.map_err(io)?;
        let mut out = tokio::io::BufWriter::with_capacity(4 << 20, file);
        // Hashed as it is written: the bytes are read once.
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match object.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&staged).await;
                    return Err(js_err(&format!("get {}", digest.short()), e));
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        drop(out);
        let actual = Sha256Digest(hasher.finalize().into());
        let store = store.clone();
        let digest = *digest;
        tokio::task::spawn_blocking(move || store.install_hashed(&staged, &digest, &actual))
            .await
            .map_err(|e| js_err("install task", e))??;
        Ok(true)
    }

    /// Removes `digest` from the bucket (retention); absent is fine.
    pub async fn remove(&self, digest: &Sha256Digest) -> Result<(), BusError> {
        match self.info(digest).await? {
            Some(i) if !i.deleted => self
                .store
                .delete(digest.to_hex())
                .await
                .map_err(|e| js_err(&format!("delete {}", digest.short()), e)),
            _ => Ok(()),
        }
    }
}

/// The generation in a Foundry nuid (`<hex>-<n>`); another writer's nuid
/// counts as generation 0.
fn generation_of(nuid: &str, hex: &str) -> u64 {
    nuid.strip_prefix(hex)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn await_ack(
    ack: Option<(usize, jetstream::context::PublishAckFuture)>,
    digest: &Sha256Digest,
) -> Result<(), BusError> {
    if let Some((index, ack)) = ack {
        ack.await
            .map_err(|e| js_err(&format!("chunk {index} of {}", digest.short()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_parse_from_foundry_nuids_only() {
        let hex = "ab".repeat(32);
        assert_eq!(generation_of(&format!("{hex}-3"), &hex), 3);
        assert_eq!(generation_of("Xy7RANDOMNUID", &hex), 0);
        assert_eq!(generation_of(&format!("{hex}-x"), &hex), 0);
    }

    #[test]
    fn the_digest_string_is_the_object_stores() {
        // sha256("") in the object store's notation.
        let d = Sha256Digest::of(b"");
        assert_eq!(
            nats_digest(&d),
            "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
