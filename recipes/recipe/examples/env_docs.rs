//! Prints every recipe key with its FOUNDRY_* variable as a Markdown table
//! (the table in recipes/README.md): `cargo run -p foundry-recipes --example env_docs`.

fn main() {
    println!("| key | env var | type | meaning |");
    println!("|---|---|---|---|");
    for (env, key, kind, doc) in foundry_recipes::env_docs() {
        println!(
            "| `{key}` | `{env}` | {kind} | {} |",
            doc.replace('|', "\\|")
        );
    }
}
