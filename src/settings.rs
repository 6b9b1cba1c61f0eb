//! Loading settings in layers: defaults, then (with `-A`) the Python app's configuration,
//! then the TOML file, then `CELERYD_<SECTION>_<KEY>` environment variables, then CLI flags;
//! then validation.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use celeryd_actors::Settings;
use celeryd_actors::settings::PoolKind;

use crate::appconf::AppLayer;

use crate::cli::RunArgs;
use crate::error::StartupError;

/// Reads `path` (if given) over the defaults, then the environment, applies the CLI
/// overrides, then validates.
pub fn load(path: Option<&Path>, overrides: &RunArgs) -> Result<Settings, StartupError> {
    load_over(path, overrides, &AppLayer::default()).map(|(s, _)| s)
}

/// What to say when `--config` names no file but looks like what Celery's `--config` takes:
/// a configuration module.
fn module_hint(path: &Path) -> String {
    let text = path.to_string_lossy();
    let module_like = !text.contains('/')
        && !text.ends_with(".toml")
        && text
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'));
    if module_like {
        format!(
            " (celeryd's --config is a TOML file; Celery's --config names a configuration \
             module: load it in the app with app.config_from_object('{text}') and start with \
             -A, whose app.conf celeryd honours)"
        )
    } else {
        String::new()
    }
}

/// [`load`] with a Python app's configuration under the file: defaults < app.conf < file <
/// environment < flags. Also returns which settings kept the app's value (`section.key` ->
/// Celery's name), for `--print-config`.
pub fn load_over(
    path: Option<&Path>,
    overrides: &RunArgs,
    app: &AppLayer,
) -> Result<(Settings, BTreeMap<String, String>), StartupError> {
    let (text, origin) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                StartupError::Config(format!(
                    "cannot read {}: {e}{}",
                    p.display(),
                    module_hint(p)
                ))
            })?;
            (text, p.display().to_string())
        }
        None => (String::new(), "defaults".to_owned()),
    };
    let (mut settings, set_above) = parse_layers(&app.table, &text, std::env::vars())
        .map_err(|e| StartupError::Config(format!("{origin}: {e}")))?;
    let as_table = |s: &Settings| {
        toml::Value::try_from(s)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default()
    };
    let before = as_table(&settings);
    apply(&mut settings, overrides);
    let after = as_table(&settings);
    let value_of = |t: &toml::Table, key: &str| {
        let (section, k) = key.split_once('.')?;
        t.get(section)?.get(k).cloned()
    };
    let from_app = app
        .origins
        .iter()
        .filter(|(key, _)| !set_above.contains(key.as_str()))
        .filter(|(key, _)| value_of(&before, key) == value_of(&after, key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    expand_paths(&mut settings)?;
    let settings = settings
        .validated()
        .map_err(|e| StartupError::Config(e.to_string()))?;
    Ok((settings, from_app))
}

/// Expands Celery's node format keys (`%h %n %d %p %i %I %%`) in the paths the worker
/// writes (statedb, logfile, pidfile), for the node this configuration names, so that two
/// instances on one host (`-n w1@%h`, `-n w2@%h`) keep their own files, as with Celery.
pub fn expand_paths(settings: &mut Settings) -> Result<(), StartupError> {
    use celeryd_actors::hostname::{expand_nodename, expand_path, this_host};
    let Ok(node) = expand_nodename(&settings.worker.hostname, &this_host()) else {
        return Ok(()); // refused with its reason by validation
    };
    let w = &mut settings.worker;
    for (key, value) in [
        ("worker.statedb", &mut w.statedb),
        ("worker.logfile", &mut w.logfile),
        ("worker.pidfile", &mut w.pidfile),
    ] {
        if let Some(v) = value {
            *v = expand_path(v, &node).map_err(|e| StartupError::Config(format!("{key}: {e}")))?;
        }
    }
    let db = &mut settings.beat.schedule_db;
    *db = expand_path(db, &node)
        .map_err(|e| StartupError::Config(format!("beat.schedule_db: {e}")))?;
    Ok(())
}

/// The broker URL a layer above app.conf (the file, the environment, the flags) sets, if
/// any: the Python app is then loaded pointed at it from the start (`CELERY_BROKER_URL`),
/// instead of loaded once more when its own `broker_url` turns out to be overruled.
pub fn broker_above_app(
    path: Option<&Path>,
    overrides: &RunArgs,
) -> Result<Option<String>, StartupError> {
    const PROBE: &str = "amqp://celeryd-probe.invalid//";
    let mut table = toml::Table::new();
    let mut broker = toml::Table::new();
    broker.insert("url".into(), toml::Value::String(PROBE.into()));
    table.insert("broker".into(), toml::Value::Table(broker));
    let probe = AppLayer {
        table,
        ..AppLayer::default()
    };
    let (settings, _) = load_over(path, overrides, &probe)?;
    Ok(Some(settings.broker.url).filter(|url| url != PROBE))
}

/// Parses a config file; unknown keys and wrong types are errors naming the key.
pub fn parse(text: &str) -> Result<Settings, String> {
    toml::from_str::<Settings>(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// The sections environment variables may set.
pub const ENV_SECTIONS: &[&str] = &["broker", "worker", "task", "python", "result"];

/// Parses a config file with `CELERYD_<SECTION>_<KEY>` variables from `env` laid over it
/// (`CELERYD_BROKER_URL`, `CELERYD_WORKER_CONCURRENCY=8`, `CELERYD_TASK_ACKS_LATE=true`,
/// `CELERYD_WORKER_QUEUES='["a", "b"]'`). A value is read as a TOML value when it is one,
/// else as a string. A variable naming no key is an error naming the variable, as a bad value
/// names the key (the `CELERYD_*` names of Celery's unit files, [`NOT_SETTINGS`], excepted).
/// `CELERY_BROKER_URL` and `CELERY_APP` ([`celery_variable`]) are read first, so that
/// `CELERYD_*` wins over them.
pub fn parse_with_env(
    text: &str,
    env: impl Iterator<Item = (String, String)>,
) -> Result<Settings, String> {
    parse_layers(&toml::Table::new(), text, env).map(|(s, _)| s)
}

/// [`parse_with_env`] over a `base` layer (a Python app's configuration): the file's keys,
/// then the environment's, replace the base's. Also returns the `section.key`s that the file
/// or the environment set.
pub fn parse_layers(
    base: &toml::Table,
    text: &str,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(Settings, HashSet<String>), String> {
    let file: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())?;
    // The file alone first, so that its errors name its own keys.
    toml::Value::Table(file.clone())
        .try_into::<Settings>()
        .map_err(|e| e.to_string().trim_end().to_owned())?;
    let mut set = HashSet::new();
    let mut table = base.clone();
    for (section, value) in file {
        match (value, table.get_mut(&section)) {
            (toml::Value::Table(keys), Some(toml::Value::Table(under))) => {
                for (k, v) in keys {
                    set.insert(format!("{section}.{k}"));
                    under.insert(k, v);
                }
            }
            (value, _) => {
                if let toml::Value::Table(keys) = &value {
                    set.extend(keys.keys().map(|k| format!("{section}.{k}")));
                }
                table.insert(section, value);
            }
        }
    }
    let env: Vec<(String, String)> = env.collect();
    // Celery's own names (its app reads them over app.conf), under celeryd's.
    let mut vars: Vec<(String, String)> = Vec::new();
    for (name, value) in &env {
        if let Some(key) = celery_variable(name) {
            vars.push((format!("CELERYD_{key}"), value.clone()));
        }
    }
    let mut own: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("CELERYD_"))
        .cloned()
        .collect();
    own.sort();
    vars.extend(own);
    for (name, raw) in vars {
        let rest = name["CELERYD_".len()..].to_ascii_lowercase();
        let Some((section, key)) = ENV_SECTIONS.iter().find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .map(|k| (*s, k.to_owned()))
        }) else {
            if NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            return Err(unknown_variable(&name, &rest));
        };
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(format!("[{section}] must be a table"));
        };
        section_table.insert(key.clone(), value);
        set.insert(format!("{section}.{key}"));
        // Checked one by one so an error names the variable, not only the key.
        toml::Value::Table(table.clone())
            .try_into::<Settings>()
            .map_err(|e| format!("{name} ({section}.{key}): {}", e.to_string().trim_end()))?;
    }
    let settings = toml::Value::Table(table)
        .try_into::<Settings>()
        .map_err(|e| e.to_string().trim_end().to_owned())?;
    Ok((settings, set))
}

/// `CELERYD_*` variables that are not settings, and are left alone: those of Celery's init
/// scripts and systemd units (its daemonization guide: read by the unit's `ExecStart` line,
/// not by the worker), and those of celeryd's own scripts (`scripts/ensure-python.sh`,
/// `scripts/test.sh`).
pub const NOT_SETTINGS: &[&str] = &[
    "CELERYD_NODES",
    "CELERYD_OPTS",
    "CELERYD_PID_FILE",
    "CELERYD_LOG_FILE",
    "CELERYD_LOG_LEVEL",
    "CELERYD_USER",
    "CELERYD_GROUP",
    "CELERYD_CHDIR",
    "CELERYD_MULTI",
    "CELERYD_SU_ARGS",
    "CELERYD_CREATE_DIRS",
    "CELERYD_CREATE_RUNDIR",
    "CELERYD_CREATE_LOGDIR",
    "CELERYD_PYTHON",
    "CELERYD_VENV",
];

/// The `CELERYD_<SECTION>_<KEY>` spelling of one of Celery's environment variables that
/// celeryd honours: `CELERY_BROKER_URL` (which Celery's app reads over `broker_url`),
/// `CELERY_APP` (`celery -A`), `CELERY_RESULT_BACKEND` (the Rust tasks' `[result] backend`;
/// with -A the app reads it itself), `CELERY_WORKER_REVOKES_MAX` and
/// `CELERY_WORKER_REVOKE_EXPIRES` (which Celery's worker reads at start). Others
/// (`CELERY_CONFIG_MODULE`, …) reach the Python app unchanged.
pub fn celery_variable(name: &str) -> Option<&'static str> {
    match name {
        "CELERY_BROKER_URL" => Some("BROKER_URL"),
        "CELERY_APP" => Some("PYTHON_APP"),
        "CELERY_RESULT_BACKEND" => Some("RESULT_BACKEND"),
        // Read by Celery's worker state module from the environment.
        "CELERY_WORKER_REVOKES_MAX" => Some("WORKER_REVOKES_MAX"),
        "CELERY_WORKER_REVOKE_EXPIRES" => Some("WORKER_REVOKE_EXPIRES"),
        _ => None,
    }
}

/// The error for a `CELERYD_*` variable that names no setting: what the names look like,
/// and the one it probably meant when its key exists in some section.
fn unknown_variable(name: &str, rest: &str) -> String {
    let defaults = toml::Value::try_from(Settings::default())
        .unwrap_or(toml::Value::Table(toml::Table::new()));
    let real: Vec<String> = ENV_SECTIONS
        .iter()
        .flat_map(|s| {
            let keys = defaults.get(*s).and_then(|t| t.as_table());
            keys.into_iter()
                .flat_map(|t| t.keys())
                .map(move |k| format!("CELERYD_{}_{}", s.to_uppercase(), k.to_uppercase()))
        })
        .collect();
    let hint = nearest(name, &real)
        .map(|m| format!("; did you mean {m}?"))
        .or_else(|| {
            // A key without its section (`CELERYD_CONCURRENCY`).
            let meant = ENV_SECTIONS.iter().find(|s| {
                defaults
                    .get(**s)
                    .and_then(|t| t.as_table())
                    .is_some_and(|t| t.contains_key(rest))
            })?;
            Some(format!(
                "; did you mean CELERYD_{}_{}?",
                meant.to_uppercase(),
                rest.to_uppercase()
            ))
        })
        .unwrap_or_default();
    format!(
        "{name}: no such setting. celeryd's variables are CELERYD_<SECTION>_<KEY>, SECTION one \
         of {}, KEY a key of that section in config/worker.toml (e.g. \
         CELERYD_WORKER_CONCURRENCY){hint}",
        ENV_SECTIONS
            .iter()
            .map(|s| s.to_uppercase())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The name in `names` closest to `typed` (a misspelling: at most 2 edits, and fewer than a
/// third of its length), if any.
fn nearest<'a>(typed: &str, names: &'a [String]) -> Option<&'a str> {
    let limit = 2.min(typed.len() / 3);
    names
        .iter()
        .map(|n| (edit_distance(typed, n), n))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

/// Levenshtein distance (insertions, deletions, substitutions), by bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The effective configuration as TOML, the broker password masked (`--print-config`).
pub fn render(settings: &Settings) -> String {
    let mut shown = settings.clone();
    shown.broker.url = settings.broker.safe_url();
    toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// Applies CLI flags over the file's values.
pub fn apply(settings: &mut Settings, o: &RunArgs) {
    let w = &mut settings.worker;
    if let Some(v) = &o.loglevel {
        w.loglevel = v.clone();
    }
    if let Some(v) = o.concurrency {
        w.concurrency = v;
    }
    if let Some(v) = &o.hostname {
        w.hostname = v.clone();
    }
    let names = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if let Some(v) = &o.queues {
        w.queues = names(v);
    }
    if let Some(v) = &o.exclude_queues {
        w.exclude_queues = names(v);
    }
    if let Some(v) = o.prefetch_multiplier {
        w.prefetch_multiplier = v;
    }
    if o.disable_prefetch {
        w.disable_prefetch = true;
    }
    if let Some(v) = o.max_tasks_per_child {
        w.max_tasks_per_child = v;
    }
    if let Some(v) = o.max_memory_per_child {
        w.max_memory_per_child = v;
    }
    if let Some(v) = &o.statedb {
        w.statedb = Some(v.clone());
    }
    if o.disable_rate_limits {
        w.disable_rate_limits = true;
    }
    if let Some(v) = o.autoscale {
        w.autoscale = Some(v);
    }
    // A name that is no pool was refused before the settings load (`RunArgs::refusal`).
    if let Some(pool) = o.pool.as_deref().and_then(|v| PoolKind::parse(v).ok()) {
        w.pool = pool;
    }
    if o.beat {
        w.beat = true;
    }
    if let Some(v) = &o.schedule {
        settings.beat.schedule_db = v.clone();
    }
    if o.events {
        w.send_events = true;
    }
    if let Some(v) = &o.metrics_addr {
        w.metrics_addr = Some(v.clone());
    }
    if let Some(v) = &o.log_format {
        w.log_format = v.clone();
    }
    if let Some(v) = &o.logfile {
        w.logfile = Some(v.clone());
    }
    if let Some(v) = &o.pidfile {
        w.pidfile = Some(v.clone());
    }
    if let Some(v) = o.heartbeat_interval {
        w.heartbeat_interval = v;
    }
    if o.without_heartbeat {
        w.heartbeat = false;
    }
    if o.without_mingle {
        w.mingle = false;
    }
    if let Some(v) = o.time_limit {
        settings.task.time_limit = Some(v);
    }
    if let Some(v) = o.soft_time_limit {
        settings.task.soft_time_limit = Some(v);
    }
    let p = &mut settings.python;
    if let Some(v) = &o.app {
        p.app = Some(v.clone());
    }
    if let Some(v) = &o.python {
        p.executable = Some(v.clone());
    }
    if let Some(v) = &o.workdir {
        p.workdir = Some(v.clone());
    }
    if o.no_main_signals {
        p.main_signals = false;
    }
    if o.no_fork_server || o.pool_start_method.as_deref() == Some("spawn") {
        p.fork_server = false;
    }
    if let Some(v) = &o.broker {
        settings.broker.url = v.clone();
    }
    if let Some(v) = &o.result_backend {
        settings.result.backend = v.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeryd_actors::settings::Seconds;

    #[test]
    fn documented_config_equals_defaults() {
        let text = include_str!("../config/worker.toml");
        assert_eq!(parse(text).unwrap(), Settings::default());
    }

    #[test]
    fn a_celery_config_module_name_is_told_apart_from_a_missing_file() {
        let hint = module_hint(Path::new("celeryconfig"));
        assert!(
            hint.contains("app.config_from_object('celeryconfig')"),
            "{hint}"
        );
        assert!(!module_hint(Path::new("proj.settings")).is_empty());
        assert_eq!(module_hint(Path::new("/etc/celeryd/worker.toml")), "");
        assert_eq!(module_hint(Path::new("worker.toml")), "");
        let e = load(Some(Path::new("celeryconfig")), &RunArgs::default()).unwrap_err();
        assert!(e.to_string().contains("config_from_object"), "{e}");
    }

    #[test]
    fn a_misspelt_variable_gets_the_nearest_real_name() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("same", "same"), 0);
        let e = parse_with_env("", env(&[("CELERYD_BROKR_URL", "amqp://x//")])).unwrap_err();
        assert!(e.contains("did you mean CELERYD_BROKER_URL?"), "{e}");
        let e = parse_with_env("", env(&[("CELERYD_WORKER_CONCURENCY", "2")])).unwrap_err();
        assert!(
            e.contains("CELERYD_WORKER_CONCURENCY") && e.contains("`concurrency`"),
            "{e}"
        );
        let e = parse_with_env("", env(&[("CELERYD_TOTALLY_ELSE", "1")])).unwrap_err();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[worker]\nconcurency = 2\n").unwrap_err();
        assert!(e.contains("concurency"), "{e}");
        let e = parse("[wurker]\n").unwrap_err();
        assert!(e.contains("wurker"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = parse("[worker]\nconcurrency = \"many\"\n").unwrap_err();
        assert!(e.contains("concurrency"), "{e}");
        let e = parse("[task]\nacks_late = 1\n").unwrap_err();
        assert!(e.contains("acks_late"), "{e}");
    }

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = "[worker]\nconcurrency = 2\n";
        let s = parse_with_env(
            file,
            env(&[
                ("CELERYD_BROKER_URL", "amqp://u:secret@h:5672//"),
                ("CELERYD_WORKER_CONCURRENCY", "8"),
                ("CELERYD_WORKER_QUEUES", r#"["a", "b"]"#),
                ("CELERYD_TASK_ACKS_LATE", "true"),
                ("CELERYD_TASK_TIME_LIMIT", "30"),
                ("CELERYD_PYTHON", "/usr/bin/python3"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(s.broker.url, "amqp://u:secret@h:5672//");
        assert_eq!(s.worker.concurrency, 8);
        assert_eq!(s.worker.queues, vec!["a", "b"]);
        assert!(s.task.acks_late);
        assert_eq!(s.task.time_limit, Some(Seconds::whole(30)));
    }

    #[test]
    fn an_unknown_variable_is_an_error_naming_it_and_celerys_names_are_read() {
        let e = parse_with_env("", env(&[("CELERYD_BROKR_URL", "amqp://x//")])).unwrap_err();
        assert!(e.contains("CELERYD_BROKR_URL: no such setting"), "{e}");
        let e = parse_with_env("", env(&[("CELERYD_CONCURRENCY", "4")])).unwrap_err();
        assert!(
            e.contains("did you mean CELERYD_WORKER_CONCURRENCY?"),
            "{e}"
        );
        // Celery's unit-file variables are the unit's, not settings.
        let s = parse_with_env("", env(&[("CELERYD_OPTS", "--time-limit=300")])).unwrap();
        assert_eq!(s, Settings::default());
        // Celery's own names, under celeryd's.
        let s = parse_with_env(
            "",
            env(&[("CELERY_BROKER_URL", "amqp://c//"), ("CELERY_APP", "proj")]),
        )
        .unwrap();
        assert_eq!(s.broker.url, "amqp://c//");
        assert_eq!(s.python.app.as_deref(), Some("proj"));
        let s = parse_with_env(
            "[broker]\nurl = \"amqp://file//\"\n",
            env(&[
                ("CELERY_BROKER_URL", "amqp://c//"),
                ("CELERYD_BROKER_URL", "amqp://d//"),
            ]),
        )
        .unwrap();
        assert_eq!(s.broker.url, "amqp://d//", "CELERYD_ wins over CELERY_");
        let s = parse_with_env(
            "",
            env(&[
                ("CELERY_WORKER_REVOKES_MAX", "7"),
                ("CELERY_WORKER_REVOKE_EXPIRES", "60"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (s.worker.revokes_max, s.worker.revoke_expires),
            (7, Seconds::whole(60))
        );
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let e = parse_with_env("", env(&[("CELERYD_WORKER_CONCURRENCY", "many")])).unwrap_err();
        assert!(
            e.contains("CELERYD_WORKER_CONCURRENCY") && e.contains("worker.concurrency"),
            "{e}"
        );
        let e = parse_with_env("", env(&[("CELERYD_WORKER_CONCURENCY", "2")])).unwrap_err();
        assert!(e.contains("CELERYD_WORKER_CONCURENCY"), "{e}");
    }

    #[test]
    fn printed_config_masks_the_password_and_reads_back() {
        let s = parse_with_env(
            "",
            env(&[("CELERYD_BROKER_URL", "amqp://u:secret@h:5672//")]),
        )
        .unwrap();
        let text = render(&s);
        assert!(
            !text.contains("secret") && text.contains("u:********@h"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(back.worker, s.worker);
    }

    #[test]
    fn app_conf_lies_under_the_file_the_environment_and_the_flags() {
        let app = crate::appconf::layer(
            serde_json::json!({"worker_concurrency": 3, "worker_prefetch_multiplier": 2,
                "task_acks_late": true, "worker_max_tasks_per_child": 7})
            .as_object()
            .unwrap(),
        )
        .unwrap();
        let (s, set) = parse_layers(
            &app.table,
            "[worker]\nprefetch_multiplier = 5\n",
            env(&[("CELERYD_WORKER_MAX_TASKS_PER_CHILD", "9")]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 3, "from the app");
        assert!(s.task.acks_late, "from the app");
        assert_eq!(s.worker.prefetch_multiplier, 5, "the file wins");
        assert_eq!(s.worker.max_tasks_per_child, 9, "the environment wins");
        assert!(set.contains("worker.prefetch_multiplier") && !set.contains("task.acks_late"));
        let e = parse_layers(&app.table, "[worker]\nconcurency = 1\n", env(&[])).unwrap_err();
        assert!(e.contains("concurency"), "{e}");
    }

    #[test]
    fn cli_overrides_file() {
        let mut s = parse("[worker]\nconcurrency = 2\nqueues = [\"a\"]\n").unwrap();
        let o = RunArgs {
            concurrency: Some(5),
            queues: Some("x, y".into()),
            hostname: Some("w1@%h".into()),
            ..Default::default()
        };
        apply(&mut s, &o);
        assert_eq!(s.worker.concurrency, 5);
        assert_eq!(s.worker.queues, vec!["x", "y"]);
        assert_eq!(s.worker.hostname, "w1@%h");
    }

    #[test]
    fn validation_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(&p, "[worker]\nloglevel = \"chatty\"\n").unwrap();
        let e = load(Some(&p), &RunArgs::default()).unwrap_err().to_string();
        assert!(e.contains("worker.loglevel"), "{e}");
        let e = load(Some(&dir.path().join("missing.toml")), &RunArgs::default()).unwrap_err();
        assert_eq!(e.exit_code(), 78);
    }

    #[test]
    fn the_broker_a_layer_above_the_app_sets_is_known_before_the_app_loads() {
        if std::env::var_os("CELERYD_BROKER_URL").is_some() {
            return; // the environment layer would set it for both cases
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(&p, "[broker]\nurl = \"amqp://u:p@h:5673/v\"\n").unwrap();
        let pinned = broker_above_app(Some(&p), &RunArgs::default()).unwrap();
        assert_eq!(pinned.as_deref(), Some("amqp://u:p@h:5673/v"));
        std::fs::write(&p, "[worker]\nconcurrency = 3\n").unwrap();
        assert_eq!(
            broker_above_app(Some(&p), &RunArgs::default()).unwrap(),
            None
        );
        assert_eq!(broker_above_app(None, &RunArgs::default()).unwrap(), None);
    }
}
