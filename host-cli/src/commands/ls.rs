//! `berth ls` and `berth active`: every machine's state, endpoint and
//! agent version, asked of all machines at once.

use std::time::{Duration, Instant};

use berth_provisioners::MachineState;
use regex::Regex;
use serde::Serialize;

use super::{agent_info, print, Machine};
use crate::cli::{ActiveArgs, LsArgs};
use crate::error::CliError;
use crate::output::{tabulate, Template};
use crate::store::Store;

/// The default `ls` layout, docker-machine's columns with VERSION for the
/// agent's version.
const DEFAULT_FORMAT: &str =
    "table {{.Name}}\t{{.Active}}\t{{.DriverName}}\t{{.State}}\t{{.URL}}\t{{.Version}}\t{{.Error}}";

/// One row of `ls`; the field names are what `--format` templates use.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListItem {
    name: String,
    /// "*" when DOCKER_HOST points at this machine and it runs, else "-".
    active: String,
    active_host: bool,
    driver_name: String,
    state: String,
    #[serde(rename = "URL")]
    url: String,
    /// "v" and the agent's version, or "Unknown".
    version: String,
    error: String,
    response_time_ms: u64,
    /// The engine's labels, `KEY=VALUE` (for `--filter label=`).
    #[serde(skip)]
    labels: Vec<String>,
}

fn header(field: &str) -> Option<&'static str> {
    Some(match field {
        "Name" => "NAME",
        "Active" => "ACTIVE",
        "ActiveHost" => "ACTIVE_HOST",
        "DriverName" => "DRIVER",
        "State" => "STATE",
        "URL" => "URL",
        "Version" => "VERSION",
        "Error" => "ERRORS",
        "ResponseTimeMs" => "RESPONSE",
        _ => return None,
    })
}

/// Asks one machine for its row, within `timeout`.
async fn item(
    store: &Store,
    name: String,
    docker_host: Option<&str>,
    timeout: Duration,
) -> ListItem {
    let begun = Instant::now();
    let mut item = ListItem {
        name: name.clone(),
        active: "-".to_owned(),
        active_host: false,
        driver_name: String::new(),
        state: MachineState::Error.to_string(),
        url: String::new(),
        version: "Unknown".to_owned(),
        error: String::new(),
        response_time_ms: 0,
        labels: Vec::new(),
    };
    let machine = match Machine::open(store, &name) {
        Ok(machine) => machine,
        Err(e) => {
            item.error = e.to_string();
            return item;
        }
    };
    item.driver_name = machine.driver.name().to_owned();
    item.labels = machine.record.driver.engine().labels.clone();
    let state = match tokio::time::timeout(timeout, machine.state()).await {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            item.error = e.to_string();
            return item;
        }
        Err(_) => {
            item.state = "Timeout".to_owned();
            return item;
        }
    };
    item.state = state.to_string();
    if state == MachineState::Running {
        let endpoint = machine.driver.endpoint();
        item.url = endpoint.docker.url.clone();
        item.active_host = docker_host == Some(item.url.as_str());
        if item.active_host {
            item.active = "*".to_owned();
        }
        let left = timeout.saturating_sub(begun.elapsed());
        match agent_info(&machine, &endpoint, left).await {
            Ok(info) => item.version = format!("v{}", info.version),
            Err(e) => item.error = e.to_string(),
        }
    }
    item.response_time_ms = u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX);
    item
}

/// Every machine's row, in the store's order, asked concurrently.
async fn items(store: &Store, timeout: Duration) -> Result<Vec<ListItem>, CliError> {
    let docker_host = std::env::var("DOCKER_HOST").ok();
    let names = store.names()?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, name) in names.into_iter().enumerate() {
        let store = store.clone();
        let docker_host = docker_host.clone();
        tasks.spawn(async move { (i, item(&store, name, docker_host.as_deref(), timeout).await) });
    }
    let mut rows = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(row) = joined {
            rows.push(row);
        }
    }
    rows.sort_by_key(|(i, _)| *i);
    Ok(rows.into_iter().map(|(_, item)| item).collect())
}

/// `--filter` conditions; all must hold, any value of one key may match.
#[derive(Debug, Default)]
struct Filters {
    driver: Vec<String>,
    state: Vec<String>,
    name: Vec<Regex>,
    /// `(key, value)` of the engine labels asked for.
    label: Vec<(String, String)>,
}

impl Filters {
    fn parse(filters: &[String]) -> Result<Self, CliError> {
        let mut out = Filters::default();
        for filter in filters {
            let (key, value) = filter.split_once('=').ok_or_else(|| {
                CliError::Usage(format!(
                    "Unsupported filter syntax {filter:?}: use KEY=VALUE"
                ))
            })?;
            match key.to_lowercase().as_str() {
                "driver" => out.driver.push(value.to_owned()),
                "state" => {
                    let known = MachineState::ALL
                        .iter()
                        .map(ToString::to_string)
                        .chain(["Timeout".to_owned()]);
                    if !known.clone().any(|s| s.eq_ignore_ascii_case(value)) {
                        return Err(CliError::Usage(format!(
                            "unknown state {value:?} in filter; the states are: {}",
                            known.collect::<Vec<_>>().join(", ")
                        )));
                    }
                    out.state.push(value.to_owned());
                }
                "name" => {
                    out.name.push(Regex::new(value).map_err(|e| {
                        CliError::Usage(format!("invalid name filter {value:?}: {e}"))
                    })?)
                }
                "label" => {
                    let (k, v) = value.split_once('=').ok_or_else(|| {
                        CliError::Usage(format!(
                            "invalid label filter {value:?}: use label=KEY=VALUE"
                        ))
                    })?;
                    out.label.push((k.to_owned(), v.to_owned()));
                }
                other => {
                    return Err(CliError::Usage(format!(
                        "Unsupported filter key '{other}': use driver, state, name or label"
                    )))
                }
            }
        }
        Ok(out)
    }

    fn matches(&self, item: &ListItem) -> bool {
        let any = |values: &[String], field: &str| {
            values.is_empty() || values.iter().any(|v| v.eq_ignore_ascii_case(field))
        };
        any(&self.driver, &item.driver_name)
            && any(&self.state, &item.state)
            && (self.name.is_empty() || self.name.iter().any(|r| r.is_match(&item.name)))
            && (self.label.is_empty()
                || self.label.iter().any(|(key, value)| {
                    item.labels.iter().any(|l| {
                        l.split_once('=').is_some_and(|(k, v)| {
                            k == key.as_str() && v.eq_ignore_ascii_case(value)
                        })
                    })
                }))
    }
}

/// `berth ls`
pub(crate) async fn ls(store: &Store, args: LsArgs) -> Result<(), CliError> {
    let filters = Filters::parse(&args.filter)?;
    let template = Template::parse(args.format.as_deref().unwrap_or(DEFAULT_FORMAT))?;
    let timeout = Duration::from_secs(args.timeout);
    let rows: Vec<ListItem> = items(store, timeout)
        .await?
        .into_iter()
        .filter(|item| filters.matches(item))
        .collect();

    if args.quiet {
        let names: String = rows.iter().map(|r| format!("{}\n", r.name)).collect();
        return print(&names);
    }
    if args.json {
        let mut json = crate::output::pretty_json(&rows);
        json.push(b'\n');
        return print(&String::from_utf8_lossy(&json));
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    if template.is_table() {
        lines.push(template.header(header));
    }
    for row in &rows {
        let value = serde_json::to_value(row).map_err(|e| CliError::Usage(e.to_string()))?;
        lines.push(template.render(&value)?);
    }
    let text = if template.is_table() {
        tabulate(&lines)
    } else {
        lines.iter().map(|l| format!("{l}\n")).collect()
    };
    print(&text)
}

/// `berth active`: the running machine whose Docker URL is `$DOCKER_HOST`.
pub(crate) async fn active(store: &Store, args: ActiveArgs) -> Result<(), CliError> {
    let rows = items(store, Duration::from_secs(args.timeout)).await?;
    if let Some(row) = rows.iter().find(|r| r.active_host) {
        return print(&format!("{}\n", row.name));
    }
    if rows.iter().any(|r| r.state == "Timeout") {
        return Err(CliError::Usage(
            "Error getting active host: timeout".to_owned(),
        ));
    }
    Err(CliError::NoActive)
}
