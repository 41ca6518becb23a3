//! The config file (`memex.toml`) and `memex config show`.
//!
//! The file is found at `--config PATH`, else `$MEMEX_CONFIG`, else `memex.toml` in the data
//! directory (`--data-dir`, `$MEMEX_DATA_DIR`, default `./.memex`); only the last may be absent.
//! Its keys are the command line's long flags, `-` written `_`: global flags at the top level,
//! a subcommand's flags in a table named for the subcommand path (`[serve]`, `[episodes.search]`).
//! Nothing here knows memex's flags: the file's values are checked by each flag's own value
//! parser and installed as that flag's default, so a flag added anywhere is configurable at
//! once and clap gives the precedence flag > env > file > default.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Subcommand};
use serde_json::{json, Value as Json};

use super::{errors, GlobalArgs};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "memex.toml";

/// Longest config file read (1 MiB; a real one is a few hundred bytes).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// What stands in for a secret's value in `config show`.
const REDACTED: &str = "<redacted>";

/// `memex config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every effective setting with where it came from (flag, env, file, default);
    /// secrets are redacted.
    Show,
}

/// Why the config file cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's report (with line and column).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A key no flag answers to, or one a file may not set.
    #[error("config file {path}: unknown key `{key}`: {why}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong and what would be right.
        why: String,
    },
    /// A value of the wrong type or one its flag refuses.
    #[error("config file {path}: invalid value for `{key}`: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// The flag parser's reason.
        why: String,
    },
}

/// How the config file's path was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSource {
    /// `--config`.
    Flag,
    /// `$MEMEX_CONFIG`.
    Env,
    /// `memex.toml` in the data directory.
    DataDir,
}

impl PathSource {
    fn as_str(self) -> &'static str {
        match self {
            PathSource::Flag => "flag",
            PathSource::Env => "env",
            PathSource::DataDir => "default",
        }
    }
}

/// The config file in force and the keys it set.
#[derive(Debug, Clone)]
pub struct FileLayer {
    /// Where the file is (or would be).
    pub path: PathBuf,
    /// How that path was chosen.
    pub source: PathSource,
    /// Whether a file was read.
    pub loaded: bool,
    /// Dotted keys the file set (`device`, `serve.bind`).
    pub keys: std::collections::BTreeSet<String>,
    /// The file's `[tools]` table (tool sources and fallbacks), with its folder.
    pub tools: memex::sources::Declared,
}

/// The parsed command line and what `config show` needs to explain it.
pub struct Effective {
    /// The command with the file's values installed as defaults.
    pub command: clap::Command,
    /// The top-level matches (global flags' sources).
    pub matches: ArgMatches,
    /// The config file.
    pub file: FileLayer,
}

/// Reads the config file, installs its values and parses the command line into `C` (the
/// binary's `Cli`, passed in so this file does not depend on the dispatcher).
pub fn parse<C: clap::Parser>() -> Result<(C, Effective), ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let (command, file) = match load(C::command(), &args) {
        Ok(loaded) => loaded,
        Err(err) => return Err(config_error(&err)),
    };
    let mut matches = match command.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(err) => return Err(errors::usage(err)),
    };
    let cli = match C::from_arg_matches_mut(&mut matches.clone()) {
        Ok(cli) => cli,
        Err(err) => return Err(errors::usage(err.format(&mut command.clone()))),
    };
    // Keep only what `config show` reads; the subcommand's own matches are not needed.
    matches.remove_subcommand();
    Ok((
        cli,
        Effective {
            command,
            matches,
            file,
        },
    ))
}

/// A config error is a usage error: exit code 2, JSON with `--json`.
fn config_error(err: &ConfigError) -> ExitCode {
    if errors::json_requested() {
        eprintln!("{}", errors::to_json("config", &err.to_string()));
    } else {
        eprintln!("error: {err}");
    }
    ExitCode::from(2)
}

/// Finds the config file for `args` and installs its values into `command`.
pub fn load(
    command: clap::Command,
    args: &[OsString],
) -> Result<(clap::Command, FileLayer), ConfigError> {
    let (path, source) = locate(args);
    let mut file = FileLayer {
        path: path.clone(),
        source,
        loaded: false,
        keys: Default::default(),
        tools: memex::sources::Declared {
            config: Default::default(),
            base: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        },
    };
    // Only a regular file (a link to one is fine), never more than the cap: a FIFO would
    // block every command and a link to /dev/zero would never end.
    let bytes =
        match memex::fsutil::read_capped(&path, MAX_FILE_BYTES, memex::fsutil::Links::Follow) {
            Ok(bytes) => bytes,
            Err(e) if source == PathSource::DataDir && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((command, file));
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::Read {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"),
    })?;
    let mut table: toml::Table = text.parse().map_err(|e| ConfigError::Parse {
        path: path.clone(),
        source: Box::new(e),
    })?;
    file.loaded = true;
    // `[tools]` declares tool sources for every command; it is not a subcommand's table.
    if let Some(tools) = table.remove("tools") {
        let toml::Value::Table(tools) = tools else {
            return Err(ConfigError::Invalid {
                path: path.clone(),
                key: "tools".into(),
                why: "expected a table ([tools], [[tools.mcp]], [[tools.openapi]], [tools.fallbacks])".into(),
            });
        };
        file.tools.config =
            toml::Value::Table(tools)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    path: path.clone(),
                    key: "tools".into(),
                    why: e.message().to_string(),
                })?;
        file.keys.insert("tools".into());
    }
    let ctx = Ctx {
        path: &path,
        in_data_dir: source == PathSource::DataDir,
    };
    let command = ctx.apply(command, &table, "", &mut file.keys)?;
    Ok((command, file))
}

/// The value of `--NAME V` / `--NAME=V` on the command line, before `--`.
fn flag_value(args: &[OsString], name: &str) -> Option<OsString> {
    let flag = format!("--{name}");
    let with_eq = format!("--{name}=");
    let mut it = args.iter().skip(1);
    let mut found = None;
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if *a == *flag {
            found = it.next().cloned();
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix(&with_eq)) {
            found = Some(OsString::from(v));
        }
    }
    found
}

fn env_value(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// Where the config file is: `--config`, `$MEMEX_CONFIG`, else in the data directory.
fn locate(args: &[OsString]) -> (PathBuf, PathSource) {
    if let Some(p) = flag_value(args, "config") {
        return (PathBuf::from(p), PathSource::Flag);
    }
    if let Some(p) = env_value("MEMEX_CONFIG") {
        return (PathBuf::from(p), PathSource::Env);
    }
    let data_dir = flag_value(args, "data-dir")
        .or_else(|| env_value("MEMEX_DATA_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(memex::paths::default_data_dir);
    (data_dir.join(FILE_NAME), PathSource::DataDir)
}

/// Flags a file may never set: they choose the file or only print.
const NOT_SETTABLE: [&str; 3] = ["config", "help", "version"];

struct Ctx<'a> {
    path: &'a Path,
    in_data_dir: bool,
}

impl Ctx<'_> {
    fn unknown(&self, key: &str, why: impl Into<String>) -> ConfigError {
        ConfigError::UnknownKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
            why: why.into(),
        }
    }

    fn invalid(&self, key: &str, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            why: why.into(),
        }
    }

    /// Installs one table's values into `cmd` (the command at `prefix`).
    fn apply(
        &self,
        mut cmd: clap::Command,
        table: &toml::Table,
        prefix: &str,
        keys: &mut std::collections::BTreeSet<String>,
    ) -> Result<clap::Command, ConfigError> {
        let what = if prefix.is_empty() {
            "memex".to_owned()
        } else {
            format!("memex {}", prefix.replace('.', " "))
        };
        for (key, value) in table {
            let long = key.replace('_', "-");
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if let toml::Value::Table(inner) = value {
                let Some(sub) = cmd.find_subcommand(&long).cloned() else {
                    return Err(
                        self.unknown(&dotted, format!("`{what}` has no subcommand `{long}`"))
                    );
                };
                let name = sub.get_name().to_owned();
                let sub = self.apply(sub, inner, &dotted.replace('-', "_"), keys)?;
                cmd = cmd.mut_subcommand(name, |_| sub);
                continue;
            }
            let Some(arg) = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .cloned()
            else {
                let hint = if prefix.is_empty() {
                    ""
                } else {
                    " (global flags go at the top of the file, before any table)"
                };
                return Err(self.unknown(&dotted, format!("`{what}` has no flag --{long}{hint}")));
            };
            if NOT_SETTABLE.contains(&long.as_str()) || arg.is_required_set() {
                return Err(self.unknown(
                    &dotted,
                    format!("--{long} of `{what}` cannot be set in a config file"),
                ));
            }
            if self.in_data_dir && prefix.is_empty() && long == "data-dir" {
                return Err(self.unknown(
                    &dotted,
                    "the data directory's own memex.toml cannot move the data directory; \
                     use --config PATH for a file that sets data_dir",
                ));
            }
            let values = self.values_for(&arg, &dotted, value)?;
            keys.insert(dotted);
            cmd = cmd.mut_arg(arg.get_id().clone(), |a| a.default_values(values));
        }
        Ok(cmd)
    }

    /// The file's value as the strings the flag would have been given, checked by the flag's
    /// own value parser.
    fn values_for(
        &self,
        arg: &Arg,
        key: &str,
        value: &toml::Value,
    ) -> Result<Vec<String>, ConfigError> {
        let action = arg.get_action();
        if matches!(action, ArgAction::SetTrue | ArgAction::SetFalse) {
            return match value {
                toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
                other => Err(self.invalid(
                    key,
                    format!("expected true or false, found {}", other.type_str()),
                )),
            };
        }
        if !matches!(action, ArgAction::Set | ArgAction::Append) {
            return Err(self.unknown(key, "this flag takes no value a file can set"));
        }
        let multiple = matches!(action, ArgAction::Append)
            || arg.get_num_args().is_some_and(|r| r.max_values() > 1);
        let delimiter = arg.get_value_delimiter();
        let values = match value {
            toml::Value::Array(items) if multiple || delimiter.is_some() => {
                let items = items
                    .iter()
                    .map(|v| {
                        scalar(v).ok_or_else(|| self.invalid(key, "expected a list of scalars"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                match delimiter {
                    // `--ef 16,32` takes one delimited value: `ef = [16, 32]` means the same.
                    Some(d) if !multiple => vec![items.join(&d.to_string())],
                    _ => items,
                }
            }
            toml::Value::Array(_) => {
                return Err(self.invalid(key, "expected one value, found an array"))
            }
            v => vec![scalar(v).ok_or_else(|| {
                self.invalid(key, format!("expected a value, found {}", v.type_str()))
            })?],
        };
        // Run the flag's own value parser on a one-flag command (no env, no default, no
        // relations), so a bad value is refused here, naming the file and key.
        let probe_arg = Arg::new("value")
            .long("value")
            .action(ArgAction::Append)
            .value_delimiter(delimiter)
            .value_parser(arg.get_value_parser().clone());
        let probe = clap::Command::new("memex.toml")
            .no_binary_name(true)
            .disable_help_flag(true)
            .arg(probe_arg);
        let argv = values.iter().map(|v| format!("--value={v}"));
        if let Err(e) = probe.try_get_matches_from(argv) {
            let rendered = e.render().to_string();
            let why = rendered
                .lines()
                .next()
                .unwrap_or("refused")
                .trim_start_matches("error: ")
                .replace("'--value <value>'", "it")
                .replace("--value <value>", "it");
            return Err(self.invalid(key, why));
        }
        Ok(values)
    }
}

/// A scalar TOML value as the string a flag would be given.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// An argument's key in the file: its long flag with `_` for `-`.
fn file_key(arg: &Arg) -> String {
    arg.get_long().unwrap_or_default().replace('-', "_")
}

/// One effective setting.
struct Setting {
    value: Option<Vec<String>>,
    source: &'static str,
    env: Option<String>,
    /// A `true`/`false` flag: shown as a TOML boolean, as the file must write it.
    boolean: bool,
}

fn is_boolean(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Whether an argument holds a secret: its environment value is hidden in `--help`, or its
/// name says so.
fn is_secret(arg: &Arg) -> bool {
    let long = arg.get_long().unwrap_or_default();
    arg.is_hide_env_values_set()
        || ["key", "secret", "token", "password"]
            .iter()
            .any(|w| long.split('-').any(|part| part == *w))
}

fn is_setting(arg: &Arg) -> bool {
    arg.get_long().is_some_and(|l| !NOT_SETTABLE.contains(&l))
        && !arg.is_positional()
        && !arg.is_required_set()
}

/// The global flags, from the real matches (a flag on this command line shows as `flag`).
fn global_settings(eff: &Effective, out: &mut BTreeMap<String, Setting>) {
    for arg in eff.command.get_arguments().filter(|a| is_setting(a)) {
        let id = arg.get_id().as_str();
        let key = file_key(arg);
        let value = eff
            .matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect());
        let source = match eff.matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "env",
            Some(_) if eff.file.keys.contains(&key) => "file",
            Some(_) => "default",
            None => "unset",
        };
        let value = redact(arg, value);
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        out.insert(
            key,
            Setting {
                value,
                source,
                env,
                boolean: is_boolean(arg),
            },
        );
    }
}

fn redact(arg: &Arg, value: Option<Vec<String>>) -> Option<Vec<String>> {
    if is_secret(arg) {
        value.map(|_| vec![REDACTED.to_owned()])
    } else {
        value
    }
}

/// A subcommand's settings: its flags with an environment variable, a default or a file value.
fn subcommand_settings(
    cmd: &clap::Command,
    prefix: &str,
    file: &FileLayer,
    out: &mut BTreeMap<String, Setting>,
) {
    for arg in cmd
        .get_arguments()
        .filter(|a| is_setting(a) && !a.is_global_set())
    {
        let key = format!("{prefix}.{}", file_key(arg));
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let from_env = arg
            .get_env()
            .and_then(std::env::var_os)
            .filter(|v| !v.is_empty());
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let (value, source) = if let Some(v) = from_env {
            (Some(vec![v.to_string_lossy().into_owned()]), "env")
        } else if file.keys.contains(&key) {
            (Some(defaults), "file")
        } else if !defaults.is_empty() {
            (Some(defaults), "default")
        } else if env.is_some() {
            (None, "unset")
        } else {
            continue;
        };
        let value = redact(arg, value);
        out.insert(
            key,
            Setting {
                value,
                source,
                env,
                boolean: is_boolean(arg),
            },
        );
    }
    for sub in cmd.get_subcommands() {
        let name = sub.get_name().replace('-', "_");
        subcommand_settings(sub, &format!("{prefix}.{name}"), file, out);
    }
}

/// Every effective setting, keyed by its config-file key.
fn settings(eff: &Effective) -> BTreeMap<String, Setting> {
    let mut out = BTreeMap::new();
    global_settings(eff, &mut out);
    for sub in eff.command.get_subcommands() {
        let name = sub.get_name().replace('-', "_");
        subcommand_settings(sub, &name, &eff.file, &mut out);
    }
    out
}

fn value_json(v: &Option<Vec<String>>) -> Json {
    match v.as_deref() {
        None => Json::Null,
        Some([one]) => Json::String(one.clone()),
        Some(many) => json!(many),
    }
}

/// Runs `memex config …`.
pub fn run(g: &GlobalArgs, c: ConfigCommand, eff: &Effective) -> anyhow::Result<ExitCode> {
    match c {
        ConfigCommand::Show => show(g, eff),
    }
}

fn show(g: &GlobalArgs, eff: &Effective) -> anyhow::Result<ExitCode> {
    let all = settings(eff);
    let file = &eff.file;
    if g.json {
        let settings: serde_json::Map<String, Json> = all
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    json!({"value": value_json(&s.value), "source": s.source, "env": s.env}),
                )
            })
            .collect();
        println!(
            "{}",
            json!({
                "file": {"path": file.path, "source": file.source.as_str(), "loaded": file.loaded},
                "settings": settings,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let state = if file.loaded { "loaded" } else { "not found" };
    println!(
        "# config file: {} ({state}; path from {})",
        file.path.display(),
        file.source.as_str()
    );
    // Global settings first (a TOML file's top level), then one table per subcommand.
    let (globals, tables): (Vec<_>, Vec<_>) = all.iter().partition(|(k, _)| !k.contains('.'));
    let mut table = String::new();
    for (key, s) in globals.into_iter().chain(tables) {
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        if section != table {
            println!("\n[{section}]");
            table = section.to_owned();
        }
        let env = s
            .env
            .as_deref()
            .map(|e| format!(", env {e}"))
            .unwrap_or_default();
        match &s.value {
            None => println!("# {name} is unset{env}"),
            Some(v) => {
                let value = match v.as_slice() {
                    [one] if s.boolean && (one == "true" || one == "false") => {
                        toml::Value::Boolean(one == "true")
                    }
                    [one] => toml::Value::String(one.clone()),
                    many => {
                        toml::Value::Array(many.iter().cloned().map(toml::Value::String).collect())
                    }
                };
                println!("{name} = {value}  # {}{env}", s.source);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
