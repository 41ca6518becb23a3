//! `memex keys create|list|revoke`: the API keys of `memex serve`.

use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use memex::serve::keys::KeyStore;

use super::GlobalArgs;

/// The `memex keys` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key and print it once (only its hash is stored).
    Create(CreateArgs),
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id; a running server refuses it from the next request.
    Revoke {
        /// The key id (key_…).
        id: String,
    },
}

/// Arguments of `memex keys create`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("owner").required(true).args(["merchant", "admin"])))]
pub struct CreateArgs {
    /// The merchant the key acts for.
    #[arg(long)]
    pub merchant: Option<String>,
    /// An admin key: every merchant, document ingestion, approvals.
    #[arg(long)]
    pub admin: bool,
    /// A name to recognise the key by in `memex keys list`.
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs one `memex keys` subcommand.
pub fn run(g: &GlobalArgs, c: KeysCommand) -> anyhow::Result<ExitCode> {
    let store = KeyStore::open_state(&g.state_url()?)?;
    match c {
        KeysCommand::Create(a) => {
            let merchant = a
                .merchant
                .as_deref()
                .map(super::compose::merchant)
                .transpose()?;
            let k = store.create(merchant.as_ref(), a.name.as_deref())?;
            if g.json {
                println!("{}", serde_json::to_string(&k)?);
            } else {
                let whom = k.merchant.as_deref().unwrap_or("all merchants");
                println!("created {} key {} for {whom}", k.role.as_str(), k.id);
                println!("{}", k.key);
                eprintln!("the key is shown only now; store it safely");
            }
        }
        KeysCommand::List => {
            let keys = store.list()?;
            if g.json {
                println!("{}", serde_json::to_string(&keys)?);
            } else if keys.is_empty() {
                println!("no keys");
            } else {
                for k in keys {
                    println!(
                        "{}  {:8}  {:20}  {}  {}{}",
                        k.id,
                        k.role.as_str(),
                        k.merchant.as_deref().unwrap_or("-"),
                        k.created_at,
                        k.name.as_deref().unwrap_or(""),
                        if k.revoked_at.is_some() {
                            "  (revoked)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            store.revoke(&id)?;
            if g.json {
                println!("{}", serde_json::json!({"id": id, "revoked": true}));
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
