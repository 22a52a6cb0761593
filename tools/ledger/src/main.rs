//! `ledger`: Foundry's command line. Every command appends to or reads the
//! event ledger in `--home`; see README.md for the full reference.

mod cmd;
mod context;
mod output;

use clap::{Parser, Subcommand};
use context::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Foundry: verifiable QLoRA fine-tuning of vision-language models.
#[derive(Parser)]
#[command(name = "ledger", version, about, propagate_version = true)]
struct Cli {
    /// Foundry home directory (ledger, views, artifacts).
    #[arg(
        long,
        global = true,
        env = "FOUNDRY_HOME",
        default_value = "./.foundry"
    )]
    home: PathBuf,
    /// The key to sign with: a key file, a key name (in `<home>/keys/` or
    /// `~/.config/foundry/keys/`), or in FOUNDRY_KEY a seed (`SU…`).
    /// Default: the home's default key, made by `ledger init`.
    #[arg(long, global = true, env = "FOUNDRY_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The root key (nkey `U…`) a history must start from: `verify`,
    /// `import` and replicas (`--nats`) refuse any other.
    #[arg(long, global = true, env = "FOUNDRY_TRUST_ROOT")]
    trust_root: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    nats: cmd::serve::NatsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the home, its keys (root, you, the runners) and the ledger's genesis.
    Init(cmd::init::InitArgs),
    /// Make, register, revoke and list signing keys.
    #[command(subcommand)]
    Key(cmd::key::KeyCommand),
    /// Show the key this command would sign with, and what it may do.
    Whoami,
    /// Set a channel's own promotion policy (admin).
    #[command(subcommand)]
    Channel(cmd::key::ChannelCommand),
    /// List events, optionally filtered; --follow waits for new ones.
    Log(cmd::log::LogArgs),
    /// Recompute every hash and the chain; report the first bad seq.
    Verify(cmd::verify::VerifyArgs),
    /// Write the whole ledger to one self-describing, verifiable file.
    Export(cmd::transfer::ExportArgs),
    /// Load an export file into an empty home, verifying it completely first.
    Import(cmd::transfer::ImportArgs),
    /// Counts per type and stream, head, size on disk.
    Stats,
    /// Measure the ledger's throughput.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// List runs, filtered by status or recipe (--at/--until: as of then).
    Runs(cmd::runs::RunsArgs),
    /// Show a run, checkpoint, adapter, dataset, recipe or channel (--at/--until: as of then).
    Show(cmd::show::ShowArgs),
    /// Draw where an adapter, checkpoint or run came from (--at/--until: as of then).
    Lineage(cmd::lineage::LineageArgs),
    /// Rebuild every view from seq 0 and print each view's digest.
    Replay,
    /// Write a report: `report run <id> --html FILE` (curves, evals, lineage as SVG).
    #[command(subcommand)]
    Report(cmd::report::ReportCommand),
    /// Run an Idefics2 model on an image and a prompt; print the generated text.
    Infer(cmd::infer::InferArgs),
    /// Work with trained adapters: `adapter merge <checkpoint> --out DIR`.
    #[command(subcommand)]
    Adapter(cmd::adapter::AdapterCommand),
    /// Move artifact files between this home and the service's bucket (--nats).
    #[command(subcommand)]
    Artifact(cmd::artifact::ArtifactCommand),
    /// Start or cancel training runs.
    #[command(subcommand)]
    Run(cmd::run::RunCommand),
    /// Run every runner in this process (the embedded default) until Ctrl-C.
    Up(cmd::up::UpArgs),
    /// Ask for a checkpoint to go to a channel; the promoter checks the gates.
    Promote(cmd::promote::PromoteArgs),
    /// Score a checkpoint (or the base model) on a pinned split; appends EvalScored.
    Eval(cmd::eval::EvalArgs),
    /// Ask for a channel to go back to the adapter it held before; the promoter checks the policy.
    Rollback(cmd::promote::RollbackArgs),
    /// Share this home's ledger over NATS (single writer + outbox) until Ctrl-C.
    Serve(cmd::serve::ServeArgs),
    /// Run runners against a `ledger serve` over NATS until Ctrl-C; `runner train`: one run in a container.
    Runner(cmd::remote::RunnerCli),
    /// Declare or show a training recipe.
    #[command(subcommand)]
    Recipe(cmd::recipe::RecipeCommand),
    /// Pin a dataset by content, or show a pinned one.
    #[command(subcommand)]
    Dataset(cmd::dataset::DatasetCommand),
    /// Pin a base model by content, or show a pinned one.
    #[command(subcommand)]
    Model(cmd::model::ModelCommand),
    /// Write deterministic synthetic financial documents in the dataset format.
    Synth(cmd::synth::SynthArgs),
    /// Runs one training or eval job for a runner, in its own process.
    #[command(name = "engine-child", hide = true)]
    EngineChild(cmd::engines::ChildArgs),
}

/// Log lines of the runners and the service (tracing) to stderr, filtered by
/// `FOUNDRY_LOG` (`warn` when unset; e.g. `info`, `foundry_bus=debug`).
fn init_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FOUNDRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Lets a closed stdout (`ledger … | head`) end the process quietly, as it
/// does other Unix tools, instead of panicking in `println!` (Rust ignores
/// SIGPIPE by default). Output is printed after the work is recorded, so
/// nothing is lost. Safe for the rest: std and tokio send on sockets with
/// MSG_NOSIGNAL, and nothing here writes to a child's pipe.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first in main, before any other thread exists; it only
    // restores the default disposition of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    // Training and inference allocate and free large tensors every step.
    foundry_qlora::tune_allocator();
    let cli = Cli::parse();
    // Commands that host runners (or drive the embedded evaluator, as
    // promote and rollback do) write to their jobs' pipes: a job that died
    // must be an EPIPE for them, not a signal that ends the runner.
    if !matches!(
        cli.command,
        Command::Runner(_)
            | Command::Up(_)
            | Command::Run(_)
            | Command::Serve(_)
            | Command::Eval(_)
            | Command::Promote(_)
            | Command::Rollback(_)
    ) {
        default_sigpipe();
    }
    // Processes that host runners or serve the ledger say on stderr why a
    // job failed or will be retried (FOUNDRY_LOG, default `warn`).
    if matches!(
        cli.command,
        Command::Runner(_) | Command::Serve(_) | Command::Up(_)
    ) {
        init_log();
    }
    if let Command::EngineChild(args) = cli.command {
        return match cmd::engines::run_child(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
                ExitCode::FAILURE
            }
        };
    }
    let ctx = match Context::new(
        cli.home,
        cli.key,
        cli.trust_root,
        cli.json,
        cli.nats.options(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(&ctx, a),
        Command::Key(c) => cmd::key::run(&ctx, c),
        Command::Whoami => cmd::key::whoami(&ctx),
        Command::Channel(c) => cmd::key::channel(&ctx, c),
        Command::Log(a) => cmd::log::run(&ctx, a),
        Command::Verify(a) => cmd::verify::run(&ctx, a),
        Command::Export(a) => cmd::transfer::export(&ctx, a),
        Command::Import(a) => cmd::transfer::import(&ctx, a),
        Command::Stats => cmd::stats::run(&ctx),
        Command::Bench(b) => cmd::bench::run(&ctx, b),
        Command::Runs(a) => cmd::runs::run(&ctx, a),
        Command::Show(a) => cmd::show::run(&ctx, a),
        Command::Lineage(a) => cmd::lineage::run(&ctx, a),
        Command::Replay => cmd::replay::run(&ctx),
        Command::Report(c) => cmd::report::run(&ctx, c),
        Command::Infer(a) => cmd::infer::run(&ctx, a),
        Command::Adapter(c) => cmd::adapter::run(&ctx, c),
        Command::Artifact(c) => cmd::artifact::run(&ctx, c),
        Command::Run(c) => cmd::run::run(&ctx, c),
        Command::Up(a) => cmd::up::run(&ctx, a),
        Command::Promote(a) => cmd::promote::promote(&ctx, a),
        Command::Rollback(a) => cmd::promote::rollback(&ctx, a),
        Command::Eval(a) => cmd::eval::run(&ctx, a),
        Command::Serve(a) => cmd::serve::run(&ctx, a),
        Command::Runner(cmd::remote::RunnerCli {
            command: Some(cmd::remote::RunnerCommand::Train(t)),
            ..
        }) => cmd::container::run(&ctx, t),
        Command::Runner(a) => cmd::remote::run(&ctx, a.args),
        Command::Recipe(c) => cmd::recipe::run(&ctx, c),
        Command::Dataset(c) => cmd::dataset::run(&ctx, c),
        Command::Model(c) => cmd::model::run(&ctx, c),
        Command::Synth(a) => cmd::synth::run(&ctx, a),
        Command::EngineChild(a) => cmd::engines::run_child(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
