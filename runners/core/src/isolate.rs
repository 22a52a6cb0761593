//! Jobs in a child process, so that a job never takes down its runner.
//!
//! A training or eval job that aborts (an allocation failure, a native
//! crash, a stack overflow) or that the kernel's OOM killer picks kills its
//! child, not the runner: the runner records how the child died and goes on
//! serving other runs. [`IsolatedTrainer`] and [`IsolatedEval`] implement the
//! engine interfaces by running a child command (the `ledger` binary's
//! hidden `engine-child` subcommand) that calls [`serve_child`] with the real
//! engines.
//!
//! The protocol is JSON lines. The parent writes one [`Request`] to the
//! child's stdin; the child answers on stdout, each message on a line that
//! starts with [`MARK`] (anything else the engine prints is passed through
//! to the runner's stderr). While training, the parent writes a [`Control`]
//! line after each checkpoint message, and `Stop` whenever it wants the
//! child to stop; a closed stdin (the runner is gone) means stop.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use foundry_events::{MetricPoint, Sha256Digest};
use serde::{Deserialize, Serialize};

use crate::evaluator::{EvalEngine, EvalJob, EvalOutcome, EvalSpecs};
use crate::trainer::{
    CheckpointRecord, Control, TrainJob, TrainPlan, TrainSink, TrainSummary, TrainingEngine,
};
use crate::EngineFailure;

/// Starts every protocol line on the child's stdout (an ASCII record
/// separator, which no engine log line starts with).
pub const MARK: &str = "\u{1e}foundry-child ";

/// Lines of the child's stderr kept to explain its death.
const STDERR_TAIL: usize = 8;

/// What the parent asks of a child.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// [`TrainingEngine::prepare`].
    Prepare(TrainJob),
    /// [`TrainingEngine::train`].
    Train(TrainJob),
    /// [`EvalEngine::evaluate`].
    Evaluate(EvalJob),
}

/// What a child tells its parent.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// A finished optimizer step.
    Step(MetricPoint),
    /// A written checkpoint; the child waits for a [`Control`] line.
    Checkpoint(CheckpointRecord),
    /// The answer to [`Request::Prepare`].
    Planned(Result<TrainPlan, EngineFailure>),
    /// The answer to [`Request::Train`].
    Trained(Result<TrainSummary, EngineFailure>),
    /// The answer to [`Request::Evaluate`].
    Evaluated(Box<Result<EvalOutcome, EngineFailure>>),
}

/// The command that starts a child: a program and its arguments (the
/// environment is inherited).
#[derive(Debug, Clone)]
pub struct ChildCommand {
    program: PathBuf,
    args: Vec<String>,
}

impl ChildCommand {
    /// `program args…`.
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Self {
        ChildCommand {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// This executable with `args` (how the `ledger` binary runs itself as
    /// a child).
    pub fn current_exe(args: &[&str]) -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?, args))
    }

    /// One request, one answer: the child's single reply. The process
    /// dying, or not starting, fails this attempt only (`retry: true`).
    fn ask(&self, what: &str, label: &str, request: &Request) -> Result<Reply, EngineFailure> {
        self.spawn(what, label)
            .and_then(|child| child.converse(request, |r, _| Some(r)))
            .map_err(EngineFailure::retryable)
    }

    fn spawn(&self, what: &str, label: &str) -> Result<Running, String> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .arg(what)
            .arg(label)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the {what} process {}: {e}",
                    self.program.display()
                )
            })?;
        let tail = Arc::new(Mutex::new(Vec::<String>::new()));
        let stderr_thread = child.stderr.take().map(|err| {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                    eprintln!("{line}");
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_TAIL {
                            t.remove(0);
                        }
                        t.push(line);
                    }
                }
            })
        });
        Ok(Running {
            child,
            tail,
            stderr_thread,
            what: what.to_string(),
        })
    }
}

/// A started child.
struct Running {
    child: Child,
    tail: Arc<Mutex<Vec<String>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    what: String,
}

impl Running {
    fn send(stdin: &mut Option<ChildStdin>, line: &str) {
        // A child that is gone cannot be told anything; its exit explains.
        if let Some(s) = stdin.as_mut() {
            if s.write_all(line.as_bytes())
                .and_then(|_| s.write_all(b"\n"))
                .and_then(|_| s.flush())
                .is_err()
            {
                *stdin = None;
            }
        }
    }

    /// Sends `request`, hands every reply to `on_reply` (which may answer on
    /// the child's stdin), and returns the final reply, or how the child
    /// died without one.
    fn converse(
        mut self,
        request: &Request,
        mut on_reply: impl FnMut(Reply, &mut Option<ChildStdin>) -> Option<Reply>,
    ) -> Result<Reply, String> {
        let mut stdin = self.child.stdin.take();
        let line = serde_json::to_string(request)
            .map_err(|e| format!("cannot encode the {} request: {e}", self.what))?;
        Self::send(&mut stdin, &line);
        let mut last = None;
        if let Some(out) = self.child.stdout.take() {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Some(json) = line.strip_prefix(MARK) else {
                    eprintln!("{line}");
                    continue;
                };
                let reply: Reply = match serde_json::from_str(json) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        return Err(format!("the {} process sent a bad message: {e}", self.what));
                    }
                };
                if let Some(done) = on_reply(reply, &mut stdin) {
                    last = Some(done);
                }
            }
        }
        drop(stdin);
        let status = self
            .child
            .wait()
            .map_err(|e| format!("waiting for the {} process: {e}", self.what))?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        match last {
            Some(reply) => Ok(reply),
            None => Err(self.death(status)),
        }
    }

    /// One line on how the child ended without an answer.
    fn death(&self, status: std::process::ExitStatus) -> String {
        let how = describe_exit(status);
        let said = self
            .tail
            .lock()
            .ok()
            .and_then(|t| t.iter().rev().find(|l| !l.trim().is_empty()).cloned());
        match said {
            Some(l) => format!("the {} process {how}: {}", self.what, l.trim()),
            None => format!("the {} process {how}", self.what),
        }
    }
}

/// `was killed by signal 9 (SIGKILL)`, `exited with code 3`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                9 => " (SIGKILL, as the kernel's OOM killer sends)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with code {c} without an answer"),
        None => "ended without an answer".to_string(),
    }
}

/// A [`TrainingEngine`] that runs each job in a child process.
#[derive(Debug, Clone)]
pub struct IsolatedTrainer {
    command: ChildCommand,
}

impl IsolatedTrainer {
    /// Jobs run as `command prepare|train <run>`.
    pub fn new(command: ChildCommand) -> Self {
        IsolatedTrainer { command }
    }
}

impl TrainingEngine for IsolatedTrainer {
    fn prepare(&self, job: &TrainJob) -> Result<TrainPlan, EngineFailure> {
        match self
            .command
            .ask("prepare", &job.run_id, &Request::Prepare(job.clone()))?
        {
            Reply::Planned(r) => r,
            other => Err(EngineFailure::retryable(format!(
                "the prepare process answered {other:?}"
            ))),
        }
    }

    fn train(
        &self,
        job: &TrainJob,
        sink: &mut dyn TrainSink,
    ) -> Result<TrainSummary, EngineFailure> {
        let child = self
            .command
            .spawn("train", &job.run_id)
            .map_err(EngineFailure::retryable)?;
        let mut stopped = false;
        let reply = child
            .converse(&Request::Train(job.clone()), |reply, stdin| match reply {
                Reply::Step(p) => {
                    if sink.on_step(p) == Control::Stop && !stopped {
                        stopped = true;
                        Running::send(stdin, &control_line(Control::Stop));
                    }
                    None
                }
                Reply::Checkpoint(c) => {
                    let control = sink.on_checkpoint(c);
                    stopped |= control == Control::Stop;
                    Running::send(stdin, &control_line(control));
                    None
                }
                done => Some(done),
            })
            .map_err(EngineFailure::retryable)?;
        match reply {
            Reply::Trained(r) => r,
            other => Err(EngineFailure::retryable(format!(
                "the train process answered {other:?}"
            ))),
        }
    }
}

fn control_line(c: Control) -> String {
    serde_json::to_string(&c).unwrap_or_else(|_| "\"Stop\"".into())
}

/// An [`EvalEngine`] that scores each job in a child process; the eval spec
/// hashes (cheap, pure) come from `specs` in this process.
#[derive(Clone)]
pub struct IsolatedEval {
    command: ChildCommand,
    specs: Arc<dyn EvalSpecs>,
}

impl IsolatedEval {
    /// Jobs run as `command eval <eval id>`.
    pub fn new(command: ChildCommand, specs: Arc<dyn EvalSpecs>) -> Self {
        IsolatedEval { command, specs }
    }
}

impl EvalSpecs for IsolatedEval {
    fn spec_sha256(
        &self,
        config: Option<&serde_json::Value>,
        split: &str,
        limit: Option<u64>,
    ) -> Result<Sha256Digest, String> {
        self.specs.spec_sha256(config, split, limit)
    }
}

impl EvalEngine for IsolatedEval {
    fn evaluate(&self, job: &EvalJob) -> Result<EvalOutcome, EngineFailure> {
        match self
            .command
            .ask("eval", &job.eval_id, &Request::Evaluate(job.clone()))?
        {
            Reply::Evaluated(r) => *r,
            other => Err(EngineFailure::retryable(format!(
                "the eval process answered {other:?}"
            ))),
        }
    }
}

/// The child's side: reads one [`Request`] from `input`, runs it on the
/// given engines (panics caught and reported as errors), and writes the
/// replies to `output`. Returns once the request is answered.
pub fn serve_child(
    trainer: &dyn TrainingEngine,
    evaluator: &dyn EvalEngine,
    mut input: impl BufRead + Send + 'static,
    output: impl Write + Send + 'static,
) -> Result<(), String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    let request: Request =
        serde_json::from_str(&line).map_err(|e| format!("a bad request: {e}"))?;
    let out = Arc::new(Mutex::new(output));
    let reply = match request {
        Request::Prepare(job) => Reply::Planned(catching(|| trainer.prepare(&job))),
        Request::Evaluate(job) => Reply::Evaluated(Box::new(catching(|| evaluator.evaluate(&job)))),
        Request::Train(job) => {
            // The parent's control lines: replies to checkpoints go through
            // the channel, a `Stop` at any time (or a closed stdin) sets the flag.
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel::<Control>();
            let reader_stop = stop.clone();
            std::thread::spawn(move || {
                let mut l = String::new();
                loop {
                    l.clear();
                    match input.read_line(&mut l) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => match serde_json::from_str::<Control>(&l) {
                            Ok(Control::Stop) => {
                                reader_stop.store(true, Ordering::SeqCst);
                                let _ = tx.send(Control::Stop);
                            }
                            Ok(c) => {
                                let _ = tx.send(c);
                            }
                            Err(_) => continue,
                        },
                    }
                }
                reader_stop.store(true, Ordering::SeqCst);
            });
            let mut sink = ChildSink {
                out: out.clone(),
                stop,
                replies: rx,
            };
            Reply::Trained(catching(|| trainer.train(&job, &mut sink)))
        }
    };
    write_reply(&out, &reply)
}

/// Runs `f`, turning a panic into a failure naming it (a bug: another
/// attempt would panic the same way).
fn catching<T>(f: impl FnOnce() -> Result<T, EngineFailure>) -> Result<T, EngineFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(EngineFailure::fatal(format!("the engine panicked: {msg}")))
    })
}

fn write_reply<W: Write>(out: &Mutex<W>, reply: &Reply) -> Result<(), String> {
    let json = serde_json::to_string(reply).map_err(|e| format!("encoding a reply: {e}"))?;
    let mut w = out.lock().map_err(|_| "the output lock is poisoned")?;
    writeln!(w, "{MARK}{json}")
        .and_then(|_| w.flush())
        .map_err(|e| format!("writing a reply: {e}"))
}

/// The child's sink: forwards steps and checkpoints to the parent.
struct ChildSink<W: Write> {
    out: Arc<Mutex<W>>,
    stop: Arc<AtomicBool>,
    replies: mpsc::Receiver<Control>,
}

impl<W: Write + Send> TrainSink for ChildSink<W> {
    fn on_step(&mut self, point: MetricPoint) -> Control {
        if write_reply(&self.out, &Reply::Step(point)).is_err() {
            return Control::Stop;
        }
        if self.stop.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_checkpoint(&mut self, checkpoint: CheckpointRecord) -> Control {
        if write_reply(&self.out, &Reply::Checkpoint(checkpoint)).is_err() {
            return Control::Stop;
        }
        // The parent answers each checkpoint once it is committed; a closed
        // stdin means the parent is gone.
        self.replies.recv().unwrap_or(Control::Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::LineEngine;

    /// A job for the line engine (its config is all it reads).
    fn job(dir: &std::path::Path) -> TrainJob {
        let resolved = foundry_recipes::resolve_str(
            crate::testkit::RECIPE,
            "line.toml",
            &Default::default(),
            None,
        )
        .unwrap();
        TrainJob {
            run_id: "r1".into(),
            attempt: 1,
            recipe_id: resolved.id.clone(),
            config: resolved.config,
            dataset: crate::testkit::dataset_pinned(),
            model: crate::testkit::model_pinned(),
            out_dir: dir.to_path_buf(),
            resume_from: None,
        }
    }

    #[derive(Default)]
    struct Recorder {
        steps: Vec<u64>,
        checkpoints: Vec<u64>,
        stop_after: Option<u64>,
    }

    impl TrainSink for Recorder {
        fn on_step(&mut self, point: MetricPoint) -> Control {
            self.steps.push(point.step);
            match self.stop_after {
                Some(n) if point.step >= n => Control::Stop,
                _ => Control::Continue,
            }
        }
        fn on_checkpoint(&mut self, c: CheckpointRecord) -> Control {
            self.checkpoints.push(c.step);
            Control::Continue
        }
    }

    /// A child that is a shell script: `script` gets the request on stdin.
    fn sh(script: &str) -> IsolatedTrainer {
        IsolatedTrainer::new(ChildCommand::new("/bin/sh", &["-c", script, "child"]))
    }

    fn step_line(step: u64) -> String {
        let p = MetricPoint {
            step,
            loss: 1.0,
            lr: 0.1,
            grad_norm: 1.0,
            tokens: 1,
            tokens_per_s: 1.0,
            elapsed_ms: 1,
        };
        format!("{MARK}{}", serde_json::to_string(&Reply::Step(p)).unwrap())
    }

    #[test]
    fn a_child_killed_by_a_signal_is_a_crashed_attempt_with_its_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "read req; echo 'loading'; printf '%s\\n' '{}' '{}'; echo 'memory allocation of 274877906816 bytes failed' >&2; kill -ABRT $$",
            step_line(1),
            step_line(2)
        );
        let mut sink = Recorder::default();
        let f = sh(&script).train(&job(dir.path()), &mut sink).unwrap_err();
        assert!(f.retry, "{f:?}");
        assert_eq!(
            f.reason,
            "the train process was killed by signal 6 (SIGABRT): memory allocation of 274877906816 bytes failed"
        );
        assert_eq!(sink.steps, vec![1, 2]);

        let f = sh("read req; kill -KILL $$")
            .train(&job(dir.path()), &mut Recorder::default())
            .unwrap_err();
        assert!(f.retry);
        assert!(f.reason.contains("signal 9 (SIGKILL"), "{}", f.reason);

        let f = sh("read req; exit 0")
            .train(&job(dir.path()), &mut Recorder::default())
            .unwrap_err();
        assert!(f.retry);
        assert!(f.reason.contains("exited with code 0"), "{}", f.reason);

        // A child that sends garbage is stopped, and said to be broken.
        let f = sh(&format!("read req; echo '{MARK}{{nonsense'; sleep 30"))
            .train(&job(dir.path()), &mut Recorder::default())
            .unwrap_err();
        assert!(f.reason.contains("bad message"), "{}", f.reason);
        // A program that does not exist.
        let e = IsolatedTrainer::new(ChildCommand::new("/nonexistent/ledger", &[]))
            .prepare(&job(dir.path()))
            .unwrap_err();
        assert!(
            e.reason
                .contains("cannot start the prepare process /nonexistent/ledger"),
            "{e}"
        );
        assert!(e.retry, "a process that could not start fails the attempt");
    }

    /// The child side, served over in-memory pipes by a thread: the real
    /// protocol between a parent sink and the line engine.
    #[test]
    fn serve_child_trains_reports_checkpoints_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let engine = LineEngine::new(0);
        let j = job(dir.path());
        let request = serde_json::to_string(&Request::Train(j.clone())).unwrap();
        // The checkpoint replies are queued up front: Continue for each; the
        // parent's end stays open until the child is done.
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        tx.send(format!("{request}\n{}\n", ["\"Continue\""; 4].join("\n")).into_bytes())
            .unwrap();
        let out = SharedBuf::default();
        serve_child(
            &engine,
            &crate::testkit::LineEval,
            BufReader::new(ChannelReader {
                rx,
                buf: Vec::new(),
            }),
            out.clone(),
        )
        .unwrap();
        drop(tx);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let replies: Vec<Reply> = text
            .lines()
            .map(|l| serde_json::from_str(l.strip_prefix(MARK).unwrap()).unwrap())
            .collect();
        let steps = replies
            .iter()
            .filter(|r| matches!(r, Reply::Step(_)))
            .count();
        let checkpoints = replies
            .iter()
            .filter(|r| matches!(r, Reply::Checkpoint(_)))
            .count();
        assert_eq!(steps, 40);
        assert_eq!(checkpoints, 4);
        assert!(matches!(
            replies.last(),
            Some(Reply::Trained(Ok(TrainSummary {
                steps: 40,
                stopped: false,
                ..
            })))
        ));

        // A closed stdin (the runner is gone) stops training at the next step.
        let out = SharedBuf::default();
        serve_child(
            &engine,
            &crate::testkit::LineEval,
            std::io::Cursor::new(format!("{request}\n").into_bytes()),
            out.clone(),
        )
        .unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let last: Reply =
            serde_json::from_str(text.lines().last().unwrap().strip_prefix(MARK).unwrap()).unwrap();
        assert!(
            matches!(last, Reply::Trained(Ok(TrainSummary { stopped: true, .. }))),
            "{last:?}"
        );

        // A bad request is an error, not a panic.
        let e = serve_child(
            &engine,
            &crate::testkit::LineEval,
            std::io::Cursor::new(b"{not json\n".to_vec()),
            SharedBuf::default(),
        )
        .unwrap_err();
        assert!(e.starts_with("a bad request"), "{e}");
    }

    /// A stdin that stays open while its sender lives.
    struct ChannelReader {
        rx: mpsc::Receiver<Vec<u8>>,
        buf: Vec<u8>,
    }

    impl std::io::Read for ChannelReader {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.buf.is_empty() {
                match self.rx.recv() {
                    Ok(b) => self.buf = b,
                    Err(_) => return Ok(0),
                }
            }
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            Ok(n)
        }
    }

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
