//! Words as the Dockerfile reads them in the instructions it expands
//! (`FROM`, `COPY`, `ADD`, `ENV`, `ARG`, `LABEL`, `EXPOSE`, `USER`,
//! `WORKDIR`, `VOLUME`, `STOPSIGNAL`): single quotes keep everything,
//! double quotes keep blanks and expand variables, the escape character
//! takes the next character as it is, and `$NAME`, `${NAME}`,
//! `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`,
//! `${NAME:?message}` and `${NAME?message}` are replaced as a POSIX shell
//! would. `RUN`, `CMD` and `ENTRYPOINT` are left to the shell itself.

/// Looks a variable up.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads words with a given escape character.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    escape: char,
}

/// A word that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShellError(pub String);

impl Lexer {
    /// A lexer with escape character `escape`.
    pub fn new(escape: char) -> Self {
        Lexer { escape }
    }

    /// One word: quotes taken away, escapes applied, variables expanded.
    pub fn word(&self, text: &str, env: Lookup<'_>) -> Result<String, ShellError> {
        Ok(self.process(text, env, false)?.concat())
    }

    /// A heredoc's text: variables expanded, quotes left as they are; the
    /// escape character keeps a `$` (or itself) from being read.
    pub fn text(&self, text: &str, env: Lookup<'_>) -> Result<String, ShellError> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == self.escape
                && matches!(chars.get(i + 1), Some(&n) if n == '$' || n == self.escape)
            {
                out.push(chars[i + 1]);
                i += 2;
            } else if c == '$' {
                let (value, next) = self.variable(&chars, i, env)?;
                out.push_str(&value);
                i = next;
            } else {
                out.push(c);
                i += 1;
            }
        }
        Ok(out)
    }

    /// Words split at blanks outside quotes, each expanded.
    pub fn words(&self, text: &str, env: Lookup<'_>) -> Result<Vec<String>, ShellError> {
        self.process(text, env, true)
    }

    /// Words split at blanks outside quotes, quotes and escapes kept, for
    /// `KEY=VALUE` lists that are expanded word by word afterwards.
    pub fn split_raw(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match quote {
                Some(q) => {
                    word.push(c);
                    if c == self.escape && q == '"' {
                        if let Some(n) = chars.next() {
                            word.push(n);
                        }
                    } else if c == q {
                        quote = None;
                    }
                }
                None if c == self.escape => {
                    word.push(c);
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                }
                None if c == '"' || c == '\'' => {
                    quote = Some(c);
                    word.push(c);
                }
                None if c.is_whitespace() => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
                None => word.push(c),
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    fn process(&self, text: &str, env: Lookup<'_>, split: bool) -> Result<Vec<String>, ShellError> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut word = String::new();
        // Whether the word has begun (a quoted empty string is a word).
        let mut started = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == self.escape {
                if let Some(&n) = chars.get(i + 1) {
                    word.push(n);
                    i += 2;
                } else {
                    word.push(c);
                    i += 1;
                }
                started = true;
                continue;
            }
            match c {
                '\'' => {
                    let end = find(&chars, i + 1, '\'').ok_or_else(|| {
                        ShellError(format!("unexpected end of {text:?}: missing '"))
                    })?;
                    word.extend(&chars[i + 1..end]);
                    i = end + 1;
                    started = true;
                }
                '"' => {
                    i += 1;
                    loop {
                        let Some(&d) = chars.get(i) else {
                            return Err(ShellError(format!(
                                "unexpected end of {text:?}: missing \""
                            )));
                        };
                        if d == '"' {
                            i += 1;
                            break;
                        }
                        if d == self.escape {
                            match chars.get(i + 1) {
                                Some(&n) if n == '"' || n == '$' || n == self.escape => {
                                    word.push(n);
                                    i += 2;
                                }
                                _ => {
                                    word.push(d);
                                    i += 1;
                                }
                            }
                            continue;
                        }
                        if d == '$' {
                            let (value, next) = self.variable(&chars, i, env)?;
                            word.push_str(&value);
                            i = next;
                            continue;
                        }
                        word.push(d);
                        i += 1;
                    }
                    started = true;
                }
                '$' => {
                    let (value, next) = self.variable(&chars, i, env)?;
                    word.push_str(&value);
                    i = next;
                    started = true;
                }
                c if split && c.is_whitespace() => {
                    if started || !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                    started = false;
                    i += 1;
                }
                c => {
                    word.push(c);
                    started = true;
                    i += 1;
                }
            }
        }
        if started || !word.is_empty() || !split {
            out.push(word);
        }
        Ok(out)
    }

    /// The value of the variable reference at `chars[at]` (a `$`), and
    /// where the text goes on after it.
    fn variable(
        &self,
        chars: &[char],
        at: usize,
        env: Lookup<'_>,
    ) -> Result<(String, usize), ShellError> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match chars.get(at + 1) {
            Some('{') => {
                let close = matching_brace(chars, at + 2).ok_or_else(|| {
                    ShellError(format!(
                        "missing '}}' in {:?}",
                        chars[at..].iter().collect::<String>()
                    ))
                })?;
                let inner: String = chars[at + 2..close].iter().collect();
                let name_len = inner.chars().take_while(|c| is_name(*c)).count();
                let name = &inner[..name_len];
                if name.is_empty() {
                    return Err(ShellError(format!("bad substitution: ${{{inner}}}")));
                }
                let rest = &inner[name_len..];
                let value = env(name);
                let set = value.is_some();
                let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
                let word = |w: &str| self.word(w, env);
                let out = if rest.is_empty() {
                    value.unwrap_or_default()
                } else if let Some(w) = rest.strip_prefix(":-") {
                    if non_empty {
                        value.unwrap_or_default()
                    } else {
                        word(w)?
                    }
                } else if let Some(w) = rest.strip_prefix(":+") {
                    if non_empty {
                        word(w)?
                    } else {
                        String::new()
                    }
                } else if let Some(w) = rest.strip_prefix(":?") {
                    if !non_empty {
                        return Err(ShellError(format!("{name}: {}", word(w)?)));
                    }
                    value.unwrap_or_default()
                } else if let Some(w) = rest.strip_prefix('-') {
                    if set {
                        value.unwrap_or_default()
                    } else {
                        word(w)?
                    }
                } else if let Some(w) = rest.strip_prefix('+') {
                    if set {
                        word(w)?
                    } else {
                        String::new()
                    }
                } else if let Some(w) = rest.strip_prefix('?') {
                    if !set {
                        return Err(ShellError(format!("{name}: {}", word(w)?)));
                    }
                    value.unwrap_or_default()
                } else {
                    return Err(ShellError(format!(
                        "unsupported modifier ({rest}) in substitution ${{{inner}}}"
                    )));
                };
                Ok((out, close + 1))
            }
            Some(&c) if is_name(c) => {
                let len = chars[at + 1..].iter().take_while(|c| is_name(**c)).count();
                let name: String = chars[at + 1..at + 1 + len].iter().collect();
                Ok((env(&name).unwrap_or_default(), at + 1 + len))
            }
            // A `$` before anything else is itself.
            _ => Ok(("$".into(), at + 1)),
        }
    }
}

fn find(chars: &[char], from: usize, c: char) -> Option<usize> {
    chars[from.min(chars.len())..]
        .iter()
        .position(|&x| x == c)
        .map(|p| p + from)
}

/// The `}` that closes a `${` whose body starts at `from`.
fn matching_brace(chars: &[char], from: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'{') => {
                depth += 1;
                i += 1;
            }
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits `KEY=VALUE` pairs (`ENV`, `LABEL`, `ARG`) and expands both
/// sides; the old one-pair form (`ENV KEY value with blanks`) too.
pub fn pairs(
    lexer: &Lexer,
    text: &str,
    env: Lookup<'_>,
    keyword: &str,
) -> Result<Vec<(String, String)>, ShellError> {
    let raw = lexer.split_raw(text);
    let Some(first) = raw.first() else {
        return Err(ShellError(format!(
            "{keyword} requires at least one argument"
        )));
    };
    if !first.contains('=') {
        // `ENV KEY VALUE…`: one pair, the value the rest of the line.
        let rest = text.trim_start()[first.len()..].trim();
        if rest.is_empty() {
            return Err(ShellError(format!(
                "{keyword} names {first} but gives it no value (use {first}=VALUE)"
            )));
        }
        return Ok(vec![(lexer.word(first, env)?, lexer.word(rest, env)?)]);
    }
    let mut out = Vec::new();
    for word in raw {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ShellError(format!(
                "{keyword} {word}: every word must be KEY=VALUE"
            )));
        };
        let key = lexer.word(key, env)?;
        if key.is_empty() {
            return Err(ShellError(format!("{keyword} {word}: the name is empty")));
        }
        out.push((key, lexer.word(value, env)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            "SPACED" => Some("x y".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_expand_as_in_a_shell() {
        let l = Lexer::new('\\');
        let w = |t: &str| l.word(t, &env).unwrap();
        assert_eq!(w("$A/${A}/$UNSET."), "alpha/alpha/.");
        assert_eq!(w("${UNSET:-def} ${EMPTY:-def} ${EMPTY-def}"), "def def ");
        assert_eq!(
            w("${A:+set} ${EMPTY:+set} ${EMPTY+set} ${UNSET+set}"),
            "set  set "
        );
        assert_eq!(w("${UNSET:-${A}}"), "alpha");
        assert_eq!(w("'$A' \"$A\" \\$A"), "$A alpha $A");
        assert_eq!(w("\"a\\\"b\" a\\ b"), "a\"b a b");
        assert_eq!(w("cost: $5 $"), "cost:  $");
        assert!(l
            .word("${UNSET:?is required}", &env)
            .unwrap_err()
            .0
            .contains("is required"));
        assert!(l.word("${A", &env).is_err());
        assert!(l.word("'open", &env).is_err());
    }

    #[test]
    fn words_split_outside_quotes() {
        let l = Lexer::new('\\');
        assert_eq!(
            l.words("a  \"b c\" '' $A", &env).unwrap(),
            ["a", "b c", "", "alpha"]
        );
        assert_eq!(l.words("  ", &env).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn key_value_pairs() {
        let l = Lexer::new('\\');
        assert_eq!(
            pairs(&l, "A=1 B=\"two words\" C=$A", &env, "ENV").unwrap(),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".into(), "two words".into()),
                ("C".into(), "alpha".into())
            ]
        );
        assert_eq!(
            pairs(&l, "KEY value with $A", &env, "ENV").unwrap(),
            [("KEY".to_owned(), "value with alpha".to_owned())]
        );
        assert!(pairs(&l, "A=1 B", &env, "ENV").is_err());
        assert!(pairs(&l, "ONLY", &env, "ENV").is_err());
    }

    #[test]
    fn heredoc_text_keeps_quotes() {
        let l = Lexer::new('\\');
        assert_eq!(
            l.text("say \"$A\" and '${B:-b}' \\$A\n", &env).unwrap(),
            "say \"alpha\" and 'b' $A\n"
        );
    }

    #[test]
    fn a_backtick_escape() {
        let l = Lexer::new('`');
        assert_eq!(l.word("c:\\dir `$A", &env).unwrap(), "c:\\dir $A");
    }
}
