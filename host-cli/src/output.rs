//! Output formats shared by the commands: aligned tables, pretty JSON, and
//! the Go-template subset that docker-machine users pass to `--format`.
//!
//! Templates understand `{{.Field}}`, nested `{{.A.B}}`, `{{.}}`,
//! `{{json .Field}}`, `{{upper .Field}}`, `{{lower .Field}}`, the `table`
//! prefix (aligned columns under a header row) and `\t`/`\n` escapes.

use serde::Serialize;
use serde_json::Value;

/// Serializes `value` as JSON indented by four spaces, as docker-machine
/// prints it.
pub fn pretty_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serializing plain data structures into memory cannot fail.
    if value.serialize(&mut ser).is_err() {
        out.clear();
    }
    out
}

/// Lays out lines whose cells are separated by tabs into aligned columns,
/// as Go's tabwriter does with minimum width 5 and padding 3. The last
/// cell of each line is not padded.
pub fn tabulate(lines: &[String]) -> String {
    const MIN_WIDTH: usize = 5;
    const PADDING: usize = 3;
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max((cell.chars().count() + PADDING).max(MIN_WIDTH));
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// An error in a template or while applying it.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// An action is not closed with `}}`.
    #[error("unclosed action in template {0:?}")]
    Unclosed(String),
    /// An action is not one this subset knows.
    #[error("unsupported template action {{{{{0}}}}}: use {{{{.Field}}}}, {{{{json .Field}}}}, {{{{upper .Field}}}} or {{{{lower .Field}}}}")]
    Unsupported(String),
    /// A field does not exist.
    #[error("template: can't evaluate field {field}; the fields are: {known}")]
    NoField {
        /// The missing field.
        field: String,
        /// The fields that exist at that level.
        known: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Print,
    Json,
    Upper,
    Lower,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Action { func: Func, path: Vec<String> },
}

/// A parsed `--format` template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
    table: bool,
}

impl Template {
    /// Parses a template; `table …` asks for aligned columns and a header.
    pub fn parse(format: &str) -> Result<Self, TemplateError> {
        let (table, body) = match format.strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, format),
        };
        let body = body
            .trim_matches(' ')
            .replace("\\t", "\t")
            .replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| TemplateError::Unclosed(format.to_owned()))?;
            parts.push(parse_action(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts, table })
    }

    /// Whether the output is a table with a header row.
    pub fn is_table(&self) -> bool {
        self.table
    }

    /// Applies the template to one value.
    pub fn render(&self, value: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Action { func, path } => {
                    let v = lookup(value, path)?;
                    let text = match func {
                        Func::Json => v.to_string(),
                        Func::Print => plain(v),
                        Func::Upper => plain(v).to_uppercase(),
                        Func::Lower => plain(v).to_lowercase(),
                    };
                    out.push_str(&text);
                }
            }
        }
        Ok(out)
    }

    /// The header row: each action replaced by `header(field)` (or the
    /// field's name in capitals when it has none).
    pub fn header(&self, header: impl Fn(&str) -> Option<&'static str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Action { path, .. } => {
                    let field = path.last().map(String::as_str).unwrap_or("");
                    match header(field) {
                        Some(h) => out.push_str(h),
                        None => out.push_str(&field.to_uppercase()),
                    }
                }
            }
        }
        out
    }
}

fn parse_action(action: &str) -> Result<Part, TemplateError> {
    let unsupported = || TemplateError::Unsupported(action.to_owned());
    let mut words = action.split_whitespace();
    let first = words.next().ok_or_else(unsupported)?;
    let (func, arg) = match first {
        "json" => (Func::Json, words.next().ok_or_else(unsupported)?),
        "upper" => (Func::Upper, words.next().ok_or_else(unsupported)?),
        "lower" => (Func::Lower, words.next().ok_or_else(unsupported)?),
        _ => (Func::Print, first),
    };
    if words.next().is_some() || !arg.starts_with('.') {
        return Err(unsupported());
    }
    let path = arg[1..]
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Part::Action { func, path })
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Result<&'a Value, TemplateError> {
    let mut v = value;
    for field in path {
        v = match v {
            Value::Object(map) => map.get(field).ok_or_else(|| TemplateError::NoField {
                field: field.clone(),
                known: map.keys().cloned().collect::<Vec<_>>().join(", "),
            })?,
            _ => {
                return Err(TemplateError::NoField {
                    field: field.clone(),
                    known: String::new(),
                })
            }
        };
    }
    Ok(v)
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_functions_and_escapes() {
        let v = json!({"Name": "dev", "State": "Running", "Driver": {"Name": "native"}});
        let t = Template::parse("{{.Name}}\\t{{ .Driver.Name }} {{upper .State}} {{json .Name}}")
            .unwrap();
        assert!(!t.is_table());
        assert_eq!(t.render(&v).unwrap(), "dev\tnative RUNNING \"dev\"");
        let t = Template::parse("{{json .}}").unwrap();
        assert_eq!(t.render(&v).unwrap(), v.to_string());
    }

    #[test]
    fn table_prefix_and_headers() {
        let t = Template::parse("table {{.Name}}\t{{.State}}").unwrap();
        assert!(t.is_table());
        let h = t.header(|f| (f == "Name").then_some("NAME"));
        assert_eq!(h, "NAME\tSTATE");
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(
            Template::parse("{{.Name"),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("{{range .}}"),
            Err(TemplateError::Unsupported(_))
        ));
        let err = Template::parse("{{.Nope}}")
            .unwrap()
            .render(&json!({"Name": "x"}))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "template: can't evaluate field Nope; the fields are: Name"
        );
    }

    #[test]
    fn tabulate_aligns_like_tabwriter() {
        let lines = vec![
            "NAME\tSTATE\tURL".to_owned(),
            "a\tRunning\tunix:///x".to_owned(),
        ];
        assert_eq!(
            tabulate(&lines),
            "NAME   STATE     URL\na      Running   unix:///x\n"
        );
    }
}
