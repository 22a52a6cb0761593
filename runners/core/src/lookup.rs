//! Finding the facts a runner needs in the ledger: the pinned inputs of a run,
//! a checkpoint's record, a channel's current adapter, the evals of a
//! checkpoint. Everything is read from events, never from a side store.

use foundry_events::{
    AdapterPromoted, BaseModelPinned, ChannelRolledBack, CheckpointCommitted, DatasetPinned, Event,
    EventType, RecipeDeclared, RecordedEvent, RunRequested,
};

use crate::{LedgerClient, Result, RunnerError};

/// How many events of one type a lookup reads per request.
const PAGE: usize = 1000;

/// The decoded events of one stream.
pub async fn stream_events(
    client: &dyn LedgerClient,
    stream: &str,
) -> Result<Vec<(RecordedEvent, Event)>> {
    let recs = client.read_stream(stream, 1).await?;
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let e = r.decode_event()?;
        out.push((r, e));
    }
    Ok(out)
}

/// The declared recipe and the pinned dataset and base model a run asks for.
pub async fn run_inputs(
    client: &dyn LedgerClient,
    req: &RunRequested,
) -> Result<(RecipeDeclared, DatasetPinned, BaseModelPinned)> {
    let recipe = recipe(client, &req.recipe_id).await?;
    let dataset = dataset(client, &req.dataset_id).await?;
    let model = model(client, &req.model_id).await?;
    Ok((recipe, dataset, model))
}

/// Every event of one type, decoded, in seq order.
pub async fn all_of_type(
    client: &dyn LedgerClient,
    ty: EventType,
) -> Result<Vec<(RecordedEvent, Event)>> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = client.read_type(ty, from, PAGE).await?;
        let n = page.len();
        for r in page {
            from = r.seq + 1;
            let e = r.decode_event()?;
            out.push((r, e));
        }
        if n < PAGE {
            return Ok(out);
        }
    }
}

/// The recipe a `RecipeDeclared` recorded.
pub async fn recipe(client: &dyn LedgerClient, recipe_id: &str) -> Result<RecipeDeclared> {
    for (_, e) in stream_events(client, &format!("recipe/{recipe_id}")).await? {
        if let Event::RecipeDeclared(r) = e {
            return Ok(r);
        }
    }
    Err(RunnerError::Missing(format!(
        "recipe {recipe_id} is not declared (ledger recipe declare FILE)"
    )))
}

/// A declared recipe's typed view (`foundry_recipes::Recipe`), so runners
/// read its sections as fields, not JSON paths.
pub async fn typed_recipe(
    client: &dyn LedgerClient,
    recipe_id: &str,
) -> Result<foundry_recipes::Recipe> {
    typed(recipe(client, recipe_id).await?)
}

/// The typed view of a declared recipe.
pub fn typed(declared: RecipeDeclared) -> Result<foundry_recipes::Recipe> {
    serde_json::from_value(declared.resolved_config).map_err(|e| {
        RunnerError::Missing(format!(
            "recipe {} does not read as a resolved recipe: {e}",
            declared.recipe_id
        ))
    })
}

/// The dataset a `DatasetPinned` recorded.
pub async fn dataset(client: &dyn LedgerClient, dataset_id: &str) -> Result<DatasetPinned> {
    for (_, e) in stream_events(client, &format!("dataset/{dataset_id}")).await? {
        if let Event::DatasetPinned(d) = e {
            return Ok(d);
        }
    }
    Err(RunnerError::Missing(format!(
        "dataset {dataset_id} is not pinned (ledger dataset pin SOURCE)"
    )))
}

/// The base model a `BaseModelPinned` recorded.
pub async fn model(client: &dyn LedgerClient, model_id: &str) -> Result<BaseModelPinned> {
    for (_, e) in stream_events(client, &format!("model/{model_id}")).await? {
        if let Event::BaseModelPinned(m) = e {
            return Ok(m);
        }
    }
    Err(RunnerError::Missing(format!(
        "base model {model_id} is not pinned (ledger model pin SOURCE)"
    )))
}

/// The request that created a run.
pub async fn run_request(client: &dyn LedgerClient, run_id: &str) -> Result<RunRequested> {
    for (_, e) in stream_events(client, &format!("run/{run_id}")).await? {
        if let Event::RunRequested(r) = e {
            return Ok(r);
        }
    }
    Err(RunnerError::Missing(format!(
        "run {run_id} was never requested"
    )))
}

/// The commit record of a checkpoint, with its event.
pub async fn checkpoint(
    client: &dyn LedgerClient,
    checkpoint_id: &str,
) -> Result<(RecordedEvent, CheckpointCommitted)> {
    for (r, e) in all_of_type(client, EventType::CheckpointCommitted).await? {
        if let Event::CheckpointCommitted(c) = e {
            if c.checkpoint_id == checkpoint_id {
                return Ok((r, c));
            }
        }
    }
    Err(RunnerError::Missing(format!(
        "checkpoint {checkpoint_id} was never committed"
    )))
}

/// A channel's current adapter and the adapter before each change, replayed
/// from its stream: `(current, history)` where history lists every adapter
/// the channel has held, oldest first.
pub async fn channel_state(
    client: &dyn LedgerClient,
    channel: &str,
) -> Result<(Option<String>, Vec<String>)> {
    let mut current: Option<String> = None;
    let mut history: Vec<String> = Vec::new();
    for (_, e) in stream_events(client, &format!("channel/{channel}")).await? {
        match e {
            Event::AdapterPromoted(AdapterPromoted { checkpoint_id, .. }) => {
                history.push(checkpoint_id.clone());
                current = Some(checkpoint_id);
            }
            Event::ChannelRolledBack(ChannelRolledBack {
                to_checkpoint_id, ..
            }) => {
                current = to_checkpoint_id;
            }
            _ => {}
        }
    }
    Ok((current, history))
}

/// The adapters a channel would fall back to, oldest first, its current one
/// last: each promotion pushes, each rollback pops. A rollback goes to the
/// one before the last.
pub async fn channel_stack(client: &dyn LedgerClient, channel: &str) -> Result<Vec<String>> {
    let mut stack: Vec<String> = Vec::new();
    for (_, e) in stream_events(client, &format!("channel/{channel}")).await? {
        match e {
            Event::AdapterPromoted(p) => stack.push(p.checkpoint_id),
            Event::ChannelRolledBack(_) => {
                stack.pop();
            }
            _ => {}
        }
    }
    Ok(stack)
}
