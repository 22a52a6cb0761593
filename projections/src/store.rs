//! The persisted views: one sled tree per view plus a `meta` tree holding
//! the last applied seq and hash, in their own sled database under
//! `home/views/` (the ledger's database is locked by whoever opens it).
//!
//! Writes are guarded by a `clean` flag in `meta`: it is cleared before the
//! view trees change and set again, with the new seq, once they all have.
//! A store found unclean (a crash mid-write), written by another format, or
//! whose last seq's hash no longer matches the ledger is rebuilt from zero.

use crate::codec::{decode_entry, Digester};
use crate::travel::fold_into;
use crate::{
    Bound, ChannelView, CheckpointView, DatasetView, EvalView, EvidenceView, LineageNodeView,
    ModelView, ProjectionError, RecipeView, Result, RunView, State, ViewDigest, ViewKind, ViewRead,
    VIEW_FORMAT,
};
use foundry_events::Sha256Digest;
use foundry_ledger::{Home, Ledger};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

const META_FORMAT: &[u8] = b"format";
const META_SEQ: &[u8] = b"last_seq";
const META_HASH: &[u8] = b"last_hash";
const META_CLEAN: &[u8] = b"clean";

/// What a catch-up did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CatchUp {
    /// Last seq applied before.
    pub from_seq: u64,
    /// Last seq applied now.
    pub to_seq: u64,
    /// Events applied.
    pub applied: u64,
    /// Entries written: by a catch-up, those its events touched; by a
    /// rebuild, every entry of the views (each written or found equal).
    pub entries_written: u64,
    /// Entries whose stored bytes changed (inserted, replaced or removed).
    /// A rebuild over views that were already right changes none.
    pub entries_changed: u64,
    /// Whether the store was rebuilt from zero, and why.
    pub rebuilt: Option<String>,
    /// Wall time, in seconds.
    pub seconds: f64,
}

/// The views persisted in sled.
pub struct ViewStore {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    trees: Vec<(ViewKind, sled::Tree)>,
}

fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Threads writing views in a full rewrite.
fn writers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Splits the views into `n` (≥ 1) groups of about equal entry counts
/// (inserting costs about the same per entry, whatever its size).
fn split_by_entries(state: &State, n: usize) -> Vec<Vec<ViewKind>> {
    let mut kinds = ViewKind::ALL.to_vec();
    kinds.sort_by_key(|k| std::cmp::Reverse(state.entry_count(*k)));
    let mut groups = vec![(0usize, Vec::new()); n.max(1)];
    for k in kinds {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += state.entry_count(k);
            g.1.push(k);
        }
    }
    groups.into_iter().map(|g| g.1).collect()
}

impl ViewStore {
    /// Opens (creating if needed) the views of a home: `home/views/store`.
    pub fn open(home: &Home) -> Result<ViewStore> {
        Self::open_dir(&home.views_dir().join("store"))
    }

    /// Opens (creating if needed) a views store in `dir`.
    pub fn open_dir(dir: &Path) -> Result<ViewStore> {
        let err = |e: &dyn std::fmt::Display| ProjectionError::Storage {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        // A store just closed (here or by a short-lived command) is released
        // by sled's threads a moment later: wait briefly for the lock.
        let started = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                // Every write ends with an explicit flush (see `finish`); no
                // background flusher competing for the CPU while views are written.
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if started.elapsed() >= std::time::Duration::from_secs(2) {
                        return Err(ProjectionError::Locked(dir.to_path_buf()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(err(&e)),
            }
        };
        let meta = db.open_tree("meta").map_err(|e| err(&e))?;
        let trees = ViewKind::ALL
            .iter()
            .map(|&k| Ok((k, db.open_tree(k.as_str()).map_err(|e| err(&e))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(ViewStore {
            path: dir.to_path_buf(),
            db,
            meta,
            trees,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> ProjectionError {
        ProjectionError::Storage {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn tree(&self, kind: ViewKind) -> &sled::Tree {
        // ViewKind::ALL order; every kind has a tree.
        &self.trees[ViewKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)].1
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seq of the last event the stored views include.
    pub fn last_seq(&self) -> Result<u64> {
        Ok(u64_of(self.meta.get(META_SEQ).map_err(|e| self.err(e))?))
    }

    fn last_hash(&self) -> Result<Option<Sha256Digest>> {
        let v = self.meta.get(META_HASH).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok())
            .map(Sha256Digest))
    }

    /// Why the store must be rebuilt before use, if it must.
    fn stale_reason(&self, ledger: &Ledger) -> Result<Option<String>> {
        let m = |k| self.meta.get(k).map_err(|e| self.err(e));
        let format = m(META_FORMAT)?;
        let clean = m(META_CLEAN)?;
        let seq = self.last_seq()?;
        if format.is_none() && seq == 0 {
            return Ok(Some("new store".into()));
        }
        if u64_of(format) != VIEW_FORMAT {
            return Ok(Some(format!("view format changed (now {VIEW_FORMAT})")));
        }
        if clean.as_deref() != Some(b"1".as_slice()) {
            return Ok(Some("an earlier write was interrupted".into()));
        }
        if seq > 0 {
            let at = ledger.get(seq)?.map(|r| r.hash);
            if at.is_none() || at != self.last_hash()? {
                return Ok(Some(format!(
                    "the ledger no longer holds the event at seq {seq} the views were built to"
                )));
            }
        }
        Ok(None)
    }

    /// Loads every stored view into memory.
    pub fn load_state(&self) -> Result<State> {
        let mut s = State::new();
        for (kind, tree) in &self.trees {
            for r in tree.iter() {
                let (k, v) = r.map_err(|e| self.err(e))?;
                let key = String::from_utf8_lossy(&k);
                s.insert_encoded(*kind, &key, &v)?;
            }
        }
        s.last_seq = self.last_seq()?;
        s.last_hash = self.last_hash()?.unwrap_or_default();
        Ok(s)
    }

    fn set_clean(&self, clean: bool) -> Result<()> {
        self.meta
            .insert(
                META_CLEAN,
                if clean {
                    b"1".as_slice()
                } else {
                    b"0".as_slice()
                },
            )
            .map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn finish(&self, state: &State) -> Result<()> {
        let mut b = sled::Batch::default();
        b.insert(META_FORMAT, &VIEW_FORMAT.to_be_bytes());
        b.insert(META_SEQ, &state.last_seq.to_be_bytes());
        b.insert(META_HASH, &state.last_hash.0);
        b.insert(META_CLEAN, b"1");
        self.meta.apply_batch(b).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Makes every stored view equal to `state`; returns how many entries
    /// the views hold and how many of them changed.
    ///
    /// An empty tree is filled by plain inserts (the `clean` flag, not a sled
    /// batch, makes the whole write atomic, and one sled batch of 100k
    /// entries is far slower than 100k inserts). A populated tree is compared
    /// with the state entry by entry, both in key order, and only the entries
    /// that differ are written or removed: a rebuild over views that were
    /// already right (`ledger replay`) writes nothing. The views are split
    /// among threads by entry count.
    pub fn write_all(&mut self, state: &State) -> Result<(u64, u64)> {
        self.set_clean(false)?;
        let groups = split_by_entries(state, writers());
        let (held, changed) = std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .iter()
                .skip(1)
                .map(|g| s.spawn(|| self.sync_views(state, g)))
                .collect();
            let (mut held, mut changed) = self.sync_views(state, &groups[0])?;
            for h in handles {
                let (a, b) = h
                    .join()
                    .map_err(|_| self.err("a writer thread panicked"))??;
                held += a;
                changed += b;
            }
            Ok::<_, ProjectionError>((held, changed))
        })?;
        self.finish(state)?;
        Ok((held, changed))
    }

    /// Makes the stored entries of `kinds` equal to `state`'s (see
    /// [`ViewStore::write_all`]): (entries held, entries changed).
    fn sync_views(&self, state: &State, kinds: &[ViewKind]) -> Result<(u64, u64)> {
        let (mut held, mut changed) = (0u64, 0u64);
        for &kind in kinds {
            let tree = self.tree(kind);
            if tree.is_empty() {
                state.for_each_entry(kind, &mut |k, v| {
                    tree.insert(k.as_bytes(), v).map_err(|e| self.err(e))?;
                    held += 1;
                    changed += 1;
                    Ok(())
                })?;
                continue;
            }
            // Merge the stored entries (sled's byte order) with the state's
            // (`String` order: the same); write after reading.
            let mut stored = tree.iter();
            let mut next = stored.next().transpose().map_err(|e| self.err(e))?;
            let mut put: Vec<(String, Vec<u8>)> = Vec::new();
            let mut gone: Vec<sled::IVec> = Vec::new();
            state.for_each_entry(kind, &mut |k, v| {
                held += 1;
                while let Some((sk, sv)) = next.take() {
                    match sk.as_ref().cmp(k.as_bytes()) {
                        std::cmp::Ordering::Less => gone.push(sk),
                        std::cmp::Ordering::Equal => {
                            if sv.as_ref() != v.as_slice() {
                                put.push((k.to_string(), v));
                            }
                            next = stored.next().transpose().map_err(|e| self.err(e))?;
                            return Ok(());
                        }
                        std::cmp::Ordering::Greater => {
                            next = Some((sk, sv));
                            break;
                        }
                    }
                    next = stored.next().transpose().map_err(|e| self.err(e))?;
                }
                put.push((k.to_string(), v));
                Ok(())
            })?;
            while let Some((sk, _)) = next {
                gone.push(sk);
                next = stored.next().transpose().map_err(|e| self.err(e))?;
            }
            changed += (put.len() + gone.len()) as u64;
            for (k, v) in put {
                tree.insert(k.as_bytes(), v).map_err(|e| self.err(e))?;
            }
            for k in gone {
                tree.remove(k).map_err(|e| self.err(e))?;
            }
        }
        Ok((held, changed))
    }

    /// Writes the entries of `state` named in `changes` (deleting absent ones).
    pub fn write_changes(
        &self,
        state: &State,
        changes: &BTreeSet<(ViewKind, String)>,
    ) -> Result<u64> {
        self.set_clean(false)?;
        let mut n = 0u64;
        for (kind, tree) in &self.trees {
            let mut b = sled::Batch::default();
            for (_, key) in changes
                .range((*kind, String::new())..)
                .take_while(|(k, _)| k == kind)
            {
                match state.encoded(*kind, key)? {
                    Some(v) => b.insert(key.as_bytes(), v),
                    None => b.remove(key.as_bytes()),
                }
                n += 1;
            }
            tree.apply_batch(b).map_err(|e| self.err(e))?;
        }
        self.finish(state)?;
        Ok(n)
    }

    /// Rebuilds every view from seq 1 (`ledger replay`).
    pub fn rebuild(&mut self, ledger: &Ledger) -> Result<CatchUp> {
        self.rebuild_because(ledger, "replay requested".into())
    }

    fn rebuild_because(&mut self, ledger: &Ledger, why: String) -> Result<CatchUp> {
        let t = Instant::now();
        let from_seq = self.last_seq()?;
        let state = crate::fold_until(ledger, Bound::Head)?;
        let (n, changed) = self.write_all(&state)?;
        let to_seq = state.last_seq;
        // Freeing a large state takes about as long as writing it; nobody
        // waits for that.
        std::thread::spawn(move || drop(state));
        Ok(CatchUp {
            from_seq,
            to_seq,
            applied: to_seq,
            entries_written: n,
            entries_changed: changed,
            rebuilt: Some(why),
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// Brings the views up to the ledger's head: applies only the events
    /// after the last applied seq and writes only the entries they changed.
    /// Rebuilds from zero if the store is new, unclean, of another format,
    /// or built from a different ledger.
    pub fn catch_up(&mut self, ledger: &Ledger) -> Result<CatchUp> {
        if let Some(why) = self.stale_reason(ledger)? {
            return self.rebuild_because(ledger, why);
        }
        let t = Instant::now();
        let from_seq = self.last_seq()?;
        if ledger.head().seq <= from_seq {
            return Ok(CatchUp {
                from_seq,
                to_seq: from_seq,
                applied: 0,
                entries_written: 0,
                entries_changed: 0,
                rebuilt: None,
                seconds: t.elapsed().as_secs_f64(),
            });
        }
        let mut state = self.load_state()?;
        state.track_changes();
        let applied = fold_into(ledger, &mut state, Bound::Head)?;
        let changes = state.take_changes();
        let n = self.write_changes(&state, &changes)?;
        Ok(CatchUp {
            from_seq,
            to_seq: state.last_seq,
            applied,
            entries_written: n,
            entries_changed: n,
            rebuilt: None,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// The digest of every stored view, in [`ViewKind::ALL`] order.
    pub fn digests(&self) -> Result<Vec<ViewDigest>> {
        self.trees
            .iter()
            .map(|(kind, tree)| {
                let mut d = Digester::new(*kind);
                for r in tree.iter() {
                    let (k, v) = r.map_err(|e| self.err(e))?;
                    d.add(&k, &v);
                }
                Ok(d.finish())
            })
            .collect()
    }

    fn get<T: DeserializeOwned>(&self, kind: ViewKind, id: &str) -> Result<Option<T>> {
        match self
            .tree(kind)
            .get(id.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(v) => Ok(Some(decode_entry(kind, id, &v)?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(&self, kind: ViewKind) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for r in self.tree(kind).iter() {
            let (k, v) = r.map_err(|e| self.err(e))?;
            out.push(decode_entry(kind, &String::from_utf8_lossy(&k), &v)?);
        }
        Ok(out)
    }
}

impl ViewRead for ViewStore {
    fn as_of(&self) -> u64 {
        self.last_seq().unwrap_or(0)
    }
    fn recipe(&self, id: &str) -> Result<Option<RecipeView>> {
        self.get(ViewKind::Recipes, id)
    }
    fn dataset(&self, id: &str) -> Result<Option<DatasetView>> {
        self.get(ViewKind::Datasets, id)
    }
    fn model(&self, id: &str) -> Result<Option<ModelView>> {
        self.get(ViewKind::Models, id)
    }
    fn run(&self, id: &str) -> Result<Option<RunView>> {
        self.get(ViewKind::Runs, id)
    }
    fn checkpoint(&self, id: &str) -> Result<Option<CheckpointView>> {
        self.get(ViewKind::Checkpoints, id)
    }
    fn eval(&self, id: &str) -> Result<Option<EvalView>> {
        self.get(ViewKind::Evals, id)
    }
    fn channel(&self, name: &str) -> Result<Option<ChannelView>> {
        self.get(ViewKind::Channels, name)
    }
    fn lineage_node(&self, key: &str) -> Result<Option<LineageNodeView>> {
        self.get(ViewKind::Lineage, key)
    }
    fn evidence(&self, event_id: &str) -> Result<Option<EvidenceView>> {
        self.get(ViewKind::Evidence, event_id)
    }
    fn runs(&self) -> Result<Vec<RunView>> {
        self.all(ViewKind::Runs)
    }
    fn channels(&self) -> Result<Vec<ChannelView>> {
        self.all(ViewKind::Channels)
    }
    fn ids(&self, kind: ViewKind, prefix: &str) -> Result<Vec<String>> {
        self.tree(kind)
            .scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(|e| self.err(e))
            })
            .collect()
    }
}

#[cfg(test)]
impl ViewStore {
    pub(crate) fn meta_for_tests(&self) -> &sled::Tree {
        &self.meta
    }
}
