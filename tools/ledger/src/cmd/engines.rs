//! The engines the runners of this binary use: the real QLoRA trainer and
//! Idefics2 evaluator, each job in a child process of this same binary
//! (`ledger engine-child …`), so that a job that aborts or is killed takes
//! down its child and not the runner. FOUNDRY_ISOLATE=0 runs jobs in the
//! runner's own process (debugging, profiling).

use std::sync::Arc;

use anyhow::{anyhow, Result};
use foundry_runner::isolate::{serve_child, ChildCommand, IsolatedEval, IsolatedTrainer};
use foundry_runner::{
    EvalEngine, EvalSpecs, EvaluatorRunner, PromoterRunner, Runner, TrainerRunner, TrainingEngine,
};

use std::time::Duration;

/// Which runners to start.
#[derive(Clone, Copy, Debug)]
pub struct Which {
    /// The trainer.
    pub trainer: bool,
    /// The evaluator.
    pub evaluator: bool,
    /// The promoter.
    pub promoter: bool,
    /// The Modal dispatcher.
    pub modal: bool,
}

impl Which {
    /// The evaluator and the promoter: what an eval or a promotion request needs.
    pub const JUDGES: Which = Which {
        trainer: false,
        evaluator: true,
        promoter: true,
        modal: false,
    };

    /// All of them.
    pub const ALL: Which = Which {
        trainer: true,
        evaluator: true,
        promoter: true,
        modal: true,
    };
}

/// The lease the embedded trainer takes on a run, from FOUNDRY_LEASE_MS.
pub fn lease() -> Duration {
    std::env::var("FOUNDRY_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(30))
}

/// How many claims in a row may end without a new checkpoint before a run
/// is given up, from FOUNDRY_MAX_ATTEMPTS (default 3).
pub fn max_attempts() -> u32 {
    std::env::var("FOUNDRY_MAX_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(foundry_runner::DEFAULT_MAX_ATTEMPTS)
}

/// The hidden subcommand a runner starts its jobs with.
pub const CHILD_COMMAND: &str = "engine-child";

/// Arguments of `ledger engine-child` (hidden): what the job is and a label
/// (the run or eval id) that shows in the process list.
#[derive(clap::Args)]
pub struct ChildArgs {
    /// `prepare`, `train` or `eval`.
    pub what: String,
    /// The run or eval id.
    pub label: String,
}

fn isolated() -> bool {
    std::env::var("FOUNDRY_ISOLATE").map_or(true, |v| v != "0")
}

fn child() -> Option<ChildCommand> {
    if !isolated() {
        return None;
    }
    ChildCommand::current_exe(&[CHILD_COMMAND]).ok()
}

/// The training engine runners use.
pub fn trainer() -> Arc<dyn TrainingEngine> {
    match child() {
        Some(c) => Arc::new(IsolatedTrainer::new(c)),
        None => Arc::new(foundry_engine::QloraEngine::new()),
    }
}

/// The eval engine runners use.
pub fn evaluator() -> Arc<dyn EvalEngine> {
    match child() {
        Some(c) => Arc::new(IsolatedEval::new(
            c,
            Arc::new(foundry_engine::Idefics2Eval::new()),
        )),
        None => Arc::new(foundry_engine::Idefics2Eval::new()),
    }
}

/// The eval spec hashes the promoter checks evidence against.
pub fn specs() -> Arc<dyn EvalSpecs> {
    Arc::new(foundry_engine::Idefics2Eval::new())
}

/// The runners `which` names, over this binary's engines, configured from
/// the environment (the trainer's lease and attempt limit, Modal's
/// options): how the embedded default and `ledger runner --nats` both
/// assemble them.
pub fn runner_set(which: Which) -> Vec<Arc<dyn Runner>> {
    let mut runners: Vec<Arc<dyn Runner>> = Vec::new();
    if which.trainer {
        runners.push(Arc::new(
            TrainerRunner::new(trainer())
                .with_lease(lease())
                .with_max_attempts(max_attempts()),
        ));
    }
    if which.evaluator {
        runners.push(Arc::new(EvaluatorRunner::new(evaluator())));
    }
    if which.promoter {
        runners.push(Arc::new(PromoterRunner::new(specs())));
    }
    if which.modal {
        runners.push(Arc::new(foundry_modal::ModalRunner::new(
            foundry_modal::ModalOptions::from_env(),
        )));
    }
    runners
}

/// `ledger engine-child`: serves one job request from stdin.
pub fn run_child(args: ChildArgs) -> Result<()> {
    if !matches!(args.what.as_str(), "prepare" | "train" | "eval") {
        return Err(anyhow!(
            "engine-child: unknown job kind {:?} (prepare, train, eval)",
            args.what
        ));
    }
    let input = std::io::BufReader::new(std::io::stdin());
    serve_child(
        &foundry_engine::QloraEngine::new(),
        &foundry_engine::Idefics2Eval::new(),
        input,
        std::io::stdout(),
    )
    .map_err(|e| anyhow!("engine-child {} {}: {e}", args.what, args.label))
}
