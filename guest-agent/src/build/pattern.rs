//! Path patterns: the globs of `COPY` and `ADD` sources, and the
//! `.dockerignore` file's rules.
//!
//! A pattern matches a whole `/`-separated path: `*` any run of
//! characters but `/`, `?` one such character, `[a-z]` and `[^a-z]` a
//! class, `**` any number of whole directories, the escape `\` the next
//! character as it is. In `.dockerignore` a rule that matches a
//! directory excludes everything below it, `!` brings back what an
//! earlier rule excluded, and the last rule that matches decides.

/// Whether `path` has characters a pattern reads specially.
pub fn has_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Whether `pattern` matches all of `path`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let s: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_components(&p, &s)
}

fn match_components(p: &[&str], s: &[&str]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(&"**") => (0..=s.len()).any(|skip| match_components(&p[1..], &s[skip..])),
        Some(first) => {
            !s.is_empty()
                && match_name(first.as_bytes(), s[0].as_bytes())
                && match_components(&p[1..], &s[1..])
        }
    }
}

/// One path component against one pattern component.
fn match_name(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|skip| match_name(&p[1..], &s[skip..])),
        Some(b'?') => !s.is_empty() && match_name(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            match class(&p[1..], c) {
                Some((hit, rest)) => hit && match_name(rest, &s[1..]),
                // An unclosed `[` is itself.
                None => c == b'[' && match_name(&p[1..], &s[1..]),
            }
        }
        Some(b'\\') if p.len() > 1 => !s.is_empty() && s[0] == p[1] && match_name(&p[2..], &s[1..]),
        Some(&c) => !s.is_empty() && s[0] == c && match_name(&p[1..], &s[1..]),
    }
}

/// Whether `c` is in the class starting at `p` (after its `[`), and the
/// pattern after the class; `None` if it never closes.
fn class(p: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let (negated, mut i) = match p.first() {
        Some(b'^' | b'!') => (true, 1),
        _ => (false, 0),
    };
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((hit != negated, &p[i + 1..]));
        }
        first = false;
        let lo = if p[i] == b'\\' && i + 1 < p.len() {
            i += 1;
            p[i]
        } else {
            p[i]
        };
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let hi = p[i + 2];
            hit |= lo <= c && c <= hi;
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    None
}

/// Cleans a pattern or path as Go's `filepath.Clean` does, relative to
/// the context: `.` and empty parts dropped, `..` applied, no leading `/`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// The rules of a `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    /// (pattern, is an exception `!`), in order.
    rules: Vec<(String, bool)>,
}

impl Ignore {
    /// Reads a `.dockerignore` file's text.
    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pattern, exception) = match line.strip_prefix('!') {
                Some(rest) => (rest.trim(), true),
                None => (line, false),
            };
            let pattern = clean(pattern);
            if !pattern.is_empty() {
                rules.push((pattern, exception));
            }
        }
        Ignore { rules }
    }

    /// Whether `path` (relative to the context) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for (pattern, exception) in &self.rules {
            // The path itself or a directory above it.
            let hit = (1..=parts.len()).any(|n| matches(pattern, &parts[..n].join("/")));
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches("*.txt", "a.txt"));
        assert!(!matches("*.txt", "dir/a.txt"));
        assert!(matches("dir/*.txt", "dir/a.txt"));
        assert!(matches("**/*.txt", "a/b/c.txt"));
        assert!(matches("**/*.txt", "c.txt"));
        assert!(matches("a/**", "a/b/c"));
        assert!(matches("file?.[ch]", "file1.c"));
        assert!(!matches("file?.[^ch]", "file1.c"));
        assert!(matches("[a-c]x", "bx"));
        assert!(matches("\\*", "*"));
        assert!(!matches("\\*", "a"));
        assert!(has_glob("src/*.rs") && !has_glob("src/main.rs"));
    }

    #[test]
    fn dockerignore_rules() {
        let ignore = Ignore::parse("# comment\n*.log\nbuild\n!build/keep.txt\n/secret/**\n");
        assert!(ignore.excludes("x.log"));
        assert!(!ignore.excludes("dir/x.log"));
        assert!(ignore.excludes("build/out.o"));
        assert!(!ignore.excludes("build/keep.txt"));
        assert!(ignore.excludes("secret/a/b"));
        assert!(!ignore.excludes("src/main.rs"));
        assert_eq!(clean("./a//b/../c/"), "a/c");
    }
}
