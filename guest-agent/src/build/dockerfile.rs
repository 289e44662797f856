//! The Dockerfile, read as Docker reads it: parser directives at the top
//! (`# escape=`, `# syntax=`), comments, line continuations with the
//! escape character, instructions in any case, `--flag=value` options,
//! JSON (exec) and shell forms, and heredocs (`RUN <<EOF`, `COPY <<EOF`).
//!
//! Variables are not expanded here: which words are expanded, and with
//! what, depends on where the build is when it reaches the instruction
//! ([`super::shell`]).

/// An instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// `["executable", "arg"]`.
    Exec(Vec<String>),
    /// The rest of the line, as written (continuations joined).
    Shell(String),
}

/// A heredoc: `<<NAME` on the instruction's line, its lines below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The word that ends it.
    pub name: String,
    /// Its text, with a final newline.
    pub content: String,
    /// Whether variables in it are expanded (the name was not quoted).
    pub expand: bool,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The line it starts on, from 1.
    pub line: usize,
    /// Its keyword, upper case (`RUN`).
    pub keyword: String,
    /// Its `--name[=value]` options, in order.
    pub flags: Vec<(String, Option<String>)>,
    /// Its arguments.
    pub args: Args,
    /// Its heredocs, in order.
    pub heredocs: Vec<Heredoc>,
    /// The instruction as written, continuations joined: what the build
    /// output shows for the step.
    pub original: String,
}

impl Instruction {
    /// The value of option `--name`, if given.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or("true"))
    }

    /// The arguments as one string: the shell form as written, or the
    /// exec form's words joined by spaces.
    pub fn text(&self) -> String {
        match &self.args {
            Args::Shell(s) => s.clone(),
            Args::Exec(words) => words.join(" "),
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` unless a directive says `` ` ``).
    pub escape: char,
    /// Every instruction, `ARG`s before the first `FROM` included.
    pub instructions: Vec<Instruction>,
}

/// A Dockerfile that does not parse, with the line that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dockerfile parse error on line {line}: {message}")]
pub struct ParseError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// The instructions there are.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Instructions whose arguments may be a JSON array.
const JSON_FORM: &[&str] = &["ADD", "CMD", "COPY", "ENTRYPOINT", "RUN", "SHELL", "VOLUME"];

/// Instructions that may carry heredocs.
const HEREDOC_FORM: &[&str] = &["ADD", "COPY", "RUN"];

fn error(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// Reads the parser directives at the top: `# key=value` lines before
/// anything else. Returns the escape character.
fn directives(lines: &[&str]) -> Result<char, ParseError> {
    let mut escape = '\\';
    let mut seen = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(body) = line.trim_start().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = body.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        if seen.contains(&key) {
            return Err(error(
                i + 1,
                format!("only one {key} parser directive can be used"),
            ));
        }
        let value = value.trim();
        if key == "escape" {
            escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(error(
                        i + 1,
                        format!("invalid escape token '{other}' does not match ` or \\"),
                    ))
                }
            };
        }
        // `syntax` names a BuildKit frontend and `check` its linter: this
        // builder is its own frontend, so both are read and let be.
        seen.push(key);
    }
    Ok(escape)
}

/// Whether a physical line continues on the next: it ends (trailing
/// blanks aside) with the escape character.
fn continues(line: &str, escape: char) -> Option<&str> {
    let trimmed = line.trim_end();
    trimmed.strip_suffix(escape)
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Splits off leading `--name[=value]` words.
fn take_flags(mut rest: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    loop {
        let trimmed = rest.trim_start();
        let Some(word_body) = trimmed.strip_prefix("--") else {
            return (flags, trimmed);
        };
        let end = word_body
            .find(char::is_whitespace)
            .unwrap_or(word_body.len());
        let word = &word_body[..end];
        if word.is_empty() {
            // A lone `--`: not a flag.
            return (flags, trimmed);
        }
        match word.split_once('=') {
            Some((name, value)) => flags.push((name.to_owned(), Some(value.to_owned()))),
            None => flags.push((word.to_owned(), None)),
        }
        rest = &word_body[end..];
    }
}

/// The JSON form, if `rest` is a JSON array of strings.
fn json_form(rest: &str) -> Option<Vec<String>> {
    let trimmed = rest.trim();
    if !trimmed.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(trimmed).ok()
}

/// The heredoc openers (`<<EOF`, `<<-EOF`, `<<"EOF"`) in a line, in order:
/// (name, strip leading tabs, expand).
fn heredoc_openers(text: &str) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'<' && bytes.get(i + 1) == Some(&b'<') => {
                let mut j = i + 2;
                if bytes.get(j) == Some(&b'<') {
                    // `<<<`: a here-string, not a heredoc.
                    i = j + 1;
                    continue;
                }
                let strip = bytes.get(j) == Some(&b'-');
                if strip {
                    j += 1;
                }
                let quoted = match bytes.get(j) {
                    Some(&q @ (b'"' | b'\'')) => {
                        j += 1;
                        Some(q)
                    }
                    _ => None,
                };
                let start = j;
                while j < bytes.len()
                    && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'-')
                {
                    j += 1;
                }
                let name = &text[start..j];
                if let Some(q) = quoted {
                    if bytes.get(j) != Some(&q) {
                        i = j;
                        continue;
                    }
                    j += 1;
                }
                if !name.is_empty() {
                    out.push((name.to_owned(), strip, quoted.is_none()));
                }
                i = j;
                continue;
            }
            None => {}
        }
        i += 1;
    }
    out
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let escape = directives(&lines)?;
    let mut instructions = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || is_comment(line) {
            i += 1;
            continue;
        }
        let start = i + 1;
        // Join the continuations; comment and blank lines inside are dropped.
        let mut logical = String::new();
        let mut current = line;
        loop {
            match continues(current, escape) {
                Some(head) => {
                    logical.push_str(head);
                    i += 1;
                    while i < lines.len() && (is_comment(lines[i]) || lines[i].trim().is_empty()) {
                        i += 1;
                    }
                    if i >= lines.len() {
                        break;
                    }
                    current = lines[i];
                }
                None => {
                    logical.push_str(current);
                    i += 1;
                    break;
                }
            }
        }
        let logical = logical.trim().to_owned();
        let (word, rest) = match logical.find(char::is_whitespace) {
            Some(n) => (&logical[..n], logical[n..].trim_start()),
            None => (logical.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        if !KEYWORDS.contains(&keyword.as_str()) {
            return Err(error(start, format!("unknown instruction: {word}")));
        }
        let (flags, rest) = take_flags(rest);
        let mut heredocs = Vec::new();
        if HEREDOC_FORM.contains(&keyword.as_str()) && json_form(rest).is_none() {
            for (name, strip, expand) in heredoc_openers(rest) {
                let mut content = String::new();
                loop {
                    let Some(body) = lines.get(i) else {
                        return Err(error(start, format!("unterminated heredoc {name}")));
                    };
                    i += 1;
                    let body = if strip {
                        body.trim_start_matches('\t')
                    } else {
                        body
                    };
                    if body == name {
                        break;
                    }
                    content.push_str(body);
                    content.push('\n');
                }
                heredocs.push(Heredoc {
                    name,
                    content,
                    expand,
                });
            }
        }
        let args = match (JSON_FORM.contains(&keyword.as_str()), json_form(rest)) {
            (true, Some(words)) => Args::Exec(words),
            _ => Args::Shell(rest.to_owned()),
        };
        check_arguments(start, &keyword, &args, &heredocs)?;
        instructions.push(Instruction {
            line: start,
            keyword,
            flags,
            args,
            heredocs,
            original: logical,
        });
    }
    if !instructions.iter().any(|i| i.keyword == "FROM") {
        return Err(error(
            lines.len().max(1),
            if instructions.is_empty() {
                "the Dockerfile has no instructions"
            } else {
                "no FROM instruction: a build stage must start with FROM"
            },
        ));
    }
    if let Some(first) = instructions
        .iter()
        .find(|i| i.keyword != "ARG")
        .filter(|i| i.keyword != "FROM")
    {
        return Err(error(
            first.line,
            format!(
                "{} before the first FROM: only ARG may come before it",
                first.keyword
            ),
        ));
    }
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

/// What each instruction must be given.
fn check_arguments(
    line: usize,
    keyword: &str,
    args: &Args,
    heredocs: &[Heredoc],
) -> Result<(), ParseError> {
    let empty = match args {
        Args::Shell(s) => s.trim().is_empty(),
        Args::Exec(w) => w.is_empty() && matches!(keyword, "SHELL" | "COPY" | "ADD"),
    };
    let needs_args = !matches!(keyword, "CMD" | "ENTRYPOINT" | "RUN" | "HEALTHCHECK");
    if empty && (needs_args || keyword == "RUN") && heredocs.is_empty() {
        return Err(error(
            line,
            format!("{keyword} requires at least one argument"),
        ));
    }
    match (keyword, args) {
        ("SHELL", Args::Shell(_)) => Err(error(
            line,
            "SHELL requires the arguments to be in JSON form",
        )),
        ("COPY" | "ADD", Args::Shell(s)) if s.split_whitespace().count() < 2 => Err(error(
            line,
            format!("{keyword} requires at least two arguments"),
        )),
        ("COPY" | "ADD", Args::Exec(w)) if w.len() < 2 => Err(error(
            line,
            format!("{keyword} requires at least two arguments"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_continuations_and_comments() {
        let df = parse(
            "# syntax=docker/dockerfile:1\n\
             ARG BASE=busybox\n\
             FROM $BASE AS build\n\
             # a comment\n\
             run echo a \\\n\
             # inside\n\
             \x20 && echo b\n\
             COPY --chown=1:2 --from=x a* /dst/\n\
             CMD [\"sh\", \"-c\", \"echo hi\"]\n\
             ENTRYPOINT [not json\n",
        )
        .unwrap();
        let kw: Vec<&str> = df.instructions.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(kw, ["ARG", "FROM", "RUN", "COPY", "CMD", "ENTRYPOINT"]);
        assert_eq!(df.instructions[2].line, 5);
        assert_eq!(
            df.instructions[2].args,
            Args::Shell("echo a   && echo b".into())
        );
        assert_eq!(df.instructions[3].flag("chown"), Some("1:2"));
        assert_eq!(df.instructions[3].flag("from"), Some("x"));
        assert_eq!(df.instructions[3].args, Args::Shell("a* /dst/".into()));
        assert_eq!(
            df.instructions[4].args,
            Args::Exec(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(
            df.instructions[5].args,
            Args::Shell("[not json".into()),
            "what is not JSON is the shell form"
        );
    }

    #[test]
    fn the_escape_directive_changes_continuations() {
        let df = parse("# escape=`\nFROM scratch\nRUN dir `\n  c:\\\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[1].args, Args::Shell("dir   c:\\".into()));
        let err = parse("# escape=x\nFROM scratch\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn heredocs() {
        let df = parse(
            "FROM busybox\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-\"END\" /greeting\n\thello $NAME\n\tEND\nRUN echo done\n",
        )
        .unwrap();
        let run = &df.instructions[1];
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].content, "echo one\necho two\n");
        assert!(run.heredocs[0].expand);
        let copy = &df.instructions[2];
        assert_eq!(copy.heredocs[0].content, "hello $NAME\n");
        assert!(!copy.heredocs[0].expand);
        assert_eq!(df.instructions[3].line, 9);
        assert!(parse("FROM busybox\nRUN <<EOF\necho\n").is_err());
    }

    #[test]
    fn errors_name_their_line() {
        let err = parse("FROM busybox\n\nFORM x\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(
            err.to_string().contains("unknown instruction: FORM"),
            "{err}"
        );
        assert!(err.to_string().contains("line 3"), "{err}");
        assert_eq!(parse("RUN x\nFROM busybox\n").unwrap_err().line, 1);
        assert_eq!(parse("FROM busybox\nCOPY onlyone\n").unwrap_err().line, 2);
        assert_eq!(parse("FROM busybox\nSHELL sh -c\n").unwrap_err().line, 2);
        assert!(parse("").is_err());
        assert!(parse("ARG A\n").is_err());
    }
}
