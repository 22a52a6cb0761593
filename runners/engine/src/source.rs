//! Training examples from a pinned split, read as they are needed: an index
//! of (shard, row) in memory, each row read from its shard, re-verified and
//! encoded only when the trainer asks for it, and the next step's rows
//! prepared in the background while a step computes.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use foundry_datasets::SplitIndex;
use foundry_events::DatasetPinned;
use foundry_idefics2::processor::{Processor, RgbImage};
use foundry_qlora::data::{encode_chat, ChatExample, Example, ExampleSource};

use crate::inputs::{answer_text, row_of, split_reader};
use crate::Result;

/// How the trainer's examples are ordered, as recorded in a run's config.
pub fn data_order(prefetch: usize) -> serde_json::Value {
    serde_json::json!({
        "index": "(shard, row) of the train split in its pinned reading order: shards and the rows of each in foundry_datasets::StreamReader's seeded permutations (seed 0, epoch 0)",
        "shuffle": "per epoch, one seeded permutation of the whole index (rand StdRng from the training seed and the epoch); a resumed run continues the same sequence",
        "read": "each row read alone from its shard and re-verified against the digest recorded when its shard was checked against the pin",
        "prefetch_examples": prefetch,
    })
}

/// The train split's rows, encoded on demand.
pub(crate) struct RowSource<'a> {
    dataset: &'a DatasetPinned,
    index: SplitIndex,
    /// Position in `index` of each example, in the pinned reading order (4 bytes an example).
    order: Vec<u32>,
    processor: &'a Processor,
    prompt: String,
    max_length: usize,
}

impl<'a> RowSource<'a> {
    /// The first `limit` rows (or all) of `split` of `dataset`. Reads nothing
    /// but the schema: shards are checked when their first row is used.
    pub(crate) fn open(
        dataset: &'a DatasetPinned,
        split: &str,
        processor: &'a Processor,
        prompt: String,
        max_length: usize,
        limit: Option<usize>,
    ) -> Result<Self> {
        let reader = split_reader(dataset, split)?;
        let rows = reader.index().len();
        if rows > u64::from(u32::MAX) {
            return Err(crate::EngineError::Invalid(format!(
                "the {split} split has {rows} rows, more than {} (one index of u32)",
                u32::MAX
            )));
        }
        let want = limit.map_or(rows, |l| (l as u64).min(rows)) as usize;
        let mut order: Vec<u32> = Vec::with_capacity(want);
        reader.for_each_in_epoch(0, |s, r| {
            if order.len() < want {
                order.push(reader.index().position_of(s as usize, u64::from(r)) as u32);
            }
        });
        Ok(RowSource {
            dataset,
            index: reader.into_index(),
            order,
            processor,
            prompt,
            max_length,
        })
    }
}

impl RowSource<'_> {
    /// Checks every shard of the split against its pin now, one after another (each shard's
    /// rows are validated in parallel windows): training reads them all, so it fails before
    /// its first step on data that changed, and its steps then pay only for reading and
    /// re-verifying their own rows. Returns the shards checked.
    pub(crate) fn check_all(&self) -> Result<usize> {
        let n = self.index.shard_count();
        (0..n)
            .try_for_each(|s| self.index.check_shard(s))
            .map_err(|e| crate::EngineError::Changed {
                what: format!(
                    "dataset {}",
                    &self.dataset.dataset_id[..12.min(self.dataset.dataset_id.len())]
                ),
                detail: e.to_string(),
            })?;
        Ok(n)
    }
}

impl ExampleSource for RowSource<'_> {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn get(&self, index: usize) -> foundry_qlora::Result<Example> {
        let at = *self
            .order
            .get(index)
            .ok_or_else(|| foundry_qlora::Error::Train(format!("row {index} out of range")))?;
        let row = row_of(self.dataset, self.index.get(u64::from(at)))
            .map_err(|e| foundry_qlora::Error::Train(e.to_string()))?;
        let image = RgbImage::decode(&row.image)?;
        let ex = encode_chat(
            self.processor,
            &ChatExample {
                images: vec![image],
                prompt: self.prompt.clone(),
                answer: answer_text(&row.target),
            },
        )?;
        if self.max_length > 0 && ex.input_ids.len() > self.max_length {
            return Err(foundry_qlora::Error::Train(format!(
                "example {index} ({} {}) is {} tokens, over training.max_length = {}",
                row.doc_type,
                row.layout,
                ex.input_ids.len(),
                self.max_length
            )));
        }
        Ok(ex)
    }
}

/// What the prefetch worker and the trainer share.
#[derive(Default)]
struct Shelf {
    /// Examples prepared and not yet taken.
    ready: HashMap<usize, foundry_qlora::Result<Example>>,
    /// Indices handed to the worker and not yet prepared.
    queued: HashSet<usize>,
}

/// A source whose `prefetch` hints are prepared by one background worker,
/// at most `depth` examples ahead (prepared or queued), so memory stays
/// bounded however large the split.
pub(crate) struct Prefetched<'s, S: ExampleSource + Sync> {
    source: &'s S,
    depth: usize,
    shelf: Mutex<Shelf>,
    arrived: Condvar,
    work: Mutex<Option<SyncSender<usize>>>,
}

impl<'s, S: ExampleSource + Sync> Prefetched<'s, S> {
    /// Wraps `source`; run [`Prefetched::work`] on another thread with the
    /// receiver.
    pub(crate) fn new(source: &'s S, depth: usize) -> (Self, Receiver<usize>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        (
            Prefetched {
                source,
                depth: depth.max(1),
                shelf: Mutex::new(Shelf::default()),
                arrived: Condvar::new(),
                work: Mutex::new(Some(tx)),
            },
            rx,
        )
    }

    /// The worker: prepares each index it is sent until [`Prefetched::close`].
    pub(crate) fn work(&self, rx: Receiver<usize>) {
        for i in rx {
            let ex = self.source.get(i);
            let mut shelf = self.shelf.lock().unwrap_or_else(|e| e.into_inner());
            shelf.queued.remove(&i);
            shelf.ready.insert(i, ex);
            self.arrived.notify_all();
        }
    }

    /// Stops the worker once it has finished what it was sent.
    pub(crate) fn close(&self) {
        self.work.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl<S: ExampleSource + Sync> ExampleSource for Prefetched<'_, S> {
    fn len(&self) -> usize {
        self.source.len()
    }

    fn get(&self, index: usize) -> foundry_qlora::Result<Example> {
        let mut shelf = self.shelf.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(ex) = shelf.ready.remove(&index) {
                return ex;
            }
            if !shelf.queued.contains(&index) {
                drop(shelf);
                return self.source.get(index);
            }
            shelf = self.arrived.wait(shelf).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn prefetch(&self, upcoming: &[usize]) {
        let work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = work.as_ref() else {
            return;
        };
        let mut shelf = self.shelf.lock().unwrap_or_else(|e| e.into_inner());
        for &i in upcoming {
            if shelf.ready.len() + shelf.queued.len() >= self.depth {
                break;
            }
            if shelf.ready.contains_key(&i) || shelf.queued.contains(&i) {
                continue;
            }
            if tx.try_send(i).is_err() {
                break;
            }
            shelf.queued.insert(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Examples whose ids are their index; counts how many were built.
    struct Counting(AtomicUsize);

    impl ExampleSource for Counting {
        fn len(&self) -> usize {
            100
        }
        fn get(&self, index: usize) -> foundry_qlora::Result<Example> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if index == 13 {
                return Err(foundry_qlora::Error::Train("row 13 is bad".into()));
            }
            Ok(Example {
                input_ids: vec![index as u32],
                labels: vec![0],
                pixel_values: None,
                pixel_attention_mask: None,
            })
        }
    }

    #[test]
    fn prefetched_examples_equal_direct_ones_and_stay_within_depth() {
        let source = Counting(AtomicUsize::new(0));
        let (pf, rx) = Prefetched::new(&source, 4);
        std::thread::scope(|s| {
            s.spawn(|| pf.work(rx));
            pf.prefetch(&[5, 6, 7, 8, 9, 10]);
            {
                let shelf = pf.shelf.lock().unwrap();
                assert!(shelf.ready.len() + shelf.queued.len() <= 4);
            }
            for i in [5, 6, 7, 8, 9, 10, 11] {
                assert_eq!(pf.get(i).unwrap().input_ids, vec![i as u32]);
            }
            // An error is handed over like an example.
            pf.prefetch(&[13]);
            assert!(pf.get(13).is_err());
            pf.close();
        });
        // Each example was built exactly once (prefetched or directly).
        assert_eq!(source.0.load(Ordering::SeqCst), 8);
        assert!(pf.shelf.lock().unwrap().ready.is_empty());
    }

    /// Records the positions (in the split index) of the rows the trainer
    /// takes, in the order it takes them, passing prefetch hints through.
    struct Recording<'a, S: ExampleSource> {
        inner: &'a S,
        order: &'a [u32],
        taken: Mutex<Vec<u32>>,
    }

    impl<S: ExampleSource> ExampleSource for Recording<'_, S> {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn get(&self, index: usize) -> foundry_qlora::Result<Example> {
            self.taken.lock().unwrap().push(self.order[index]);
            self.inner.get(index)
        }
        fn prefetch(&self, upcoming: &[usize]) {
            self.inner.prefetch(upcoming)
        }
    }

    fn repo(rel: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    /// Two train shards of 5 small PNG rows each.
    fn pinned_dataset(root: &std::path::Path) -> DatasetPinned {
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::write(
            root.join("foundry_schema.json"),
            r#"{"invoice": ["invoice_number", "total"]}"#,
        )
        .unwrap();
        for shard in 0..2u32 {
            let mut lines = String::new();
            for i in 0..5u32 {
                let name = format!("images/{shard}-{i}.png");
                image::RgbImage::from_fn(40, 24, |x, y| {
                    image::Rgb([(x * 5 + i * 40) as u8, (y * 7) as u8, (shard * 90) as u8])
                })
                .save(root.join(&name))
                .unwrap();
                let target =
                    serde_json::json!({"invoice_number": format!("{shard}{i}"), "total": "1.50"});
                let row = serde_json::json!({"image": name, "doc_type": "invoice", "layout": "a", "target": target});
                lines.push_str(&format!("{row}\n"));
            }
            std::fs::write(
                root.join(format!("train-0000{shard}-of-00002.jsonl")),
                lines,
            )
            .unwrap();
        }
        let source = root.display().to_string();
        foundry_datasets::pin_dir(root, &source, None)
            .unwrap()
            .to_event()
    }

    fn config(total_steps: u64) -> foundry_qlora::train::TrainConfig {
        foundry_qlora::train::TrainConfig {
            seed: 7,
            lr: 5e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            warmup_steps: 1,
            schedule: foundry_qlora::train::Schedule::Constant,
            total_steps,
            batch_size: 2,
            grad_accum: 1,
            save_every: 3,
            keep_last: 10,
            lora: foundry_qlora::lora::LoraConfig {
                r: 2,
                lora_alpha: 4.0,
                lora_dropout: 0.0,
                target_modules: r".*text_model.*(q_proj|v_proj)$".into(),
                init: foundry_qlora::lora::LoraInit::Kaiming,
                use_rslora: false,
                base_model_name_or_path: None,
                revision: None,
            },
        }
    }

    /// The rows a trainer takes from the split, from `resume` (a checkpoint
    /// directory) or the start, through the prefetching source as the engine
    /// runs it.
    fn rows_taken(
        source: &RowSource,
        out: &std::path::Path,
        resume: Option<&std::path::Path>,
    ) -> Vec<u32> {
        let tiny = repo("ml/idefics2/fixtures/tiny");
        let model = foundry_idefics2::Idefics2::load_dir(
            &tiny,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut trainer = match resume {
            Some(dir) => foundry_qlora::train::Trainer::resume(model, config(8), dir).unwrap(),
            None => foundry_qlora::train::Trainer::new(model, config(8)).unwrap(),
        };
        let (prefetched, work) = Prefetched::new(source, 2);
        let recording = Recording {
            inner: &prefetched,
            order: &source.order,
            taken: Mutex::new(Vec::new()),
        };
        std::thread::scope(|s| {
            s.spawn(|| prefetched.work(work));
            trainer
                .run(
                    &recording,
                    out,
                    &mut |_, _| foundry_qlora::train::Flow::Continue,
                    &mut |_| foundry_qlora::train::Flow::Continue,
                )
                .unwrap();
            prefetched.close();
        });
        recording.taken.into_inner().unwrap()
    }

    #[test]
    fn a_resumed_run_takes_exactly_the_rows_of_an_uninterrupted_one() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = pinned_dataset(&dir.path().join("data"));
        let processor = Processor::from_dir(&repo("ml/idefics2/fixtures/tiny")).unwrap();
        let source = RowSource::open(
            &dataset,
            "train",
            &processor,
            "Extract JSON.".into(),
            0,
            None,
        )
        .unwrap();
        assert_eq!(source.len(), 10);
        // The index order interleaves the shards' rows by seeded permutations.
        let mut sorted = source.order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<u32>>());

        let full_dir = dir.path().join("full");
        let full = rows_taken(&source, &full_dir, None);
        // 8 steps of 2: more than one epoch, each epoch a permutation of all rows.
        assert_eq!(full.len(), 16);
        let mut epoch = full[..10].to_vec();
        epoch.sort_unstable();
        assert_eq!(epoch, (0..10).collect::<Vec<u32>>());
        assert_ne!(full[..6], full[10..16], "the second epoch is reshuffled");
        for step in [3u64, 6] {
            let resumed = rows_taken(
                &source,
                &dir.path().join(format!("resumed-{step}")),
                Some(&full_dir.join(format!("checkpoint-{step}"))),
            );
            assert_eq!(
                resumed,
                full[2 * step as usize..].to_vec(),
                "resumed after step {step}"
            );
        }
    }
}
