//! Shells that `berth env` writes for: how each sets and unsets a
//! variable, quotes a value, and evaluates a command's output.

use clap::ValueEnum;

/// A shell `berth env` can configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// GNU Bash.
    Bash,
    /// Z shell.
    Zsh,
    /// A POSIX shell (dash, busybox sh, ksh).
    Sh,
    /// The friendly interactive shell.
    Fish,
    /// tcsh and csh.
    Tcsh,
    /// Windows PowerShell and PowerShell (pwsh).
    Powershell,
    /// The Windows command prompt.
    Cmd,
    /// Emacs Lisp, for `M-x eval-buffer`.
    Emacs,
}

impl Shell {
    /// The user's shell from `$SHELL` (its file name); PowerShell on
    /// Windows and a POSIX shell elsewhere when `$SHELL` is unset.
    pub fn detect() -> Result<Shell, String> {
        match std::env::var_os("SHELL").filter(|s| !s.is_empty()) {
            Some(path) => {
                let path = std::path::PathBuf::from(path);
                let name = path
                    .file_stem()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                Shell::from_program(&name).ok_or_else(|| {
                    format!(
                        "unknown shell {:?} in $SHELL: pass --shell with one of bash, zsh, sh, fish, tcsh, powershell, cmd, emacs",
                        path.display().to_string()
                    )
                })
            }
            None if cfg!(windows) => Ok(Shell::Powershell),
            None => Ok(Shell::Sh),
        }
    }

    fn from_program(name: &str) -> Option<Shell> {
        Some(match name {
            "bash" => Shell::Bash,
            "zsh" => Shell::Zsh,
            "sh" | "dash" | "ash" | "ksh" | "mksh" | "busybox" => Shell::Sh,
            "fish" => Shell::Fish,
            "tcsh" | "csh" => Shell::Tcsh,
            "pwsh" | "powershell" => Shell::Powershell,
            "cmd" => Shell::Cmd,
            _ => return None,
        })
    }

    /// The line that sets `name` to `value`.
    pub fn set(self, name: &str, value: &str) -> String {
        match self {
            Shell::Bash | Shell::Zsh | Shell::Sh => {
                format!("export {name}=\"{}\"\n", escape(value, "\\\"$`", '\\'))
            }
            Shell::Fish => format!("set -gx {name} \"{}\";\n", escape(value, "\\\"$", '\\')),
            Shell::Tcsh => format!("setenv {name} '{}';\n", value.replace('\'', "'\\''")),
            Shell::Powershell => format!("$Env:{name} = \"{}\"\n", escape(value, "`\"$", '`')),
            Shell::Cmd => format!("SET {name}={value}\n"),
            Shell::Emacs => format!("(setenv \"{name}\" \"{}\")\n", escape(value, "\\\"", '\\')),
        }
    }

    /// The line that removes `name` from the environment.
    pub fn unset(self, name: &str) -> String {
        match self {
            Shell::Bash | Shell::Zsh | Shell::Sh => format!("unset {name}\n"),
            Shell::Fish => format!("set -e {name};\n"),
            Shell::Tcsh => format!("unsetenv {name};\n"),
            Shell::Powershell => {
                format!("Remove-Item Env:\\{name} -ErrorAction SilentlyContinue\n")
            }
            Shell::Cmd => format!("SET {name}=\n"),
            Shell::Emacs => format!("(setenv \"{name}\" nil)\n"),
        }
    }

    /// The closing comment: how to apply `command_line`'s output.
    pub fn usage_hint(self, command_line: &str) -> String {
        let (comment, eval) = match self {
            Shell::Bash | Shell::Zsh | Shell::Sh => ("#", format!("eval \"$({command_line})\"")),
            Shell::Fish => ("#", format!("eval ({command_line})")),
            Shell::Tcsh => (":", format!("eval `{command_line}`")),
            Shell::Powershell => ("#", format!("& {command_line} | Invoke-Expression")),
            Shell::Cmd => (
                "REM",
                format!("\t@FOR /f \"tokens=*\" %i IN ('{command_line}') DO @%i"),
            ),
            Shell::Emacs => (
                ";;",
                format!(
                    "(with-temp-buffer (shell-command \"{}\" (current-buffer)) (eval-buffer))",
                    escape(command_line, "\\\"", '\\')
                ),
            ),
        };
        format!("{comment} Run this command to configure your shell:\n{comment} {eval}\n")
    }
}

/// Puts `escape_char` before every character of `special` in `value`.
fn escape(value: &str, special: &str, escape_char: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if special.contains(c) {
            out.push(escape_char);
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shell_sets_and_unsets_in_its_syntax() {
        let v = "unix:///home/a b/$x\"y";
        assert_eq!(
            Shell::Bash.set("DOCKER_HOST", v),
            "export DOCKER_HOST=\"unix:///home/a b/\\$x\\\"y\"\n"
        );
        assert_eq!(
            Shell::Fish.set("X", v),
            "set -gx X \"unix:///home/a b/\\$x\\\"y\";\n"
        );
        assert_eq!(Shell::Tcsh.set("X", "it's"), "setenv X 'it'\\''s';\n");
        assert_eq!(Shell::Powershell.set("X", "a$b"), "$Env:X = \"a`$b\"\n");
        assert_eq!(Shell::Cmd.set("X", "a b"), "SET X=a b\n");
        assert_eq!(Shell::Emacs.set("X", "a\"b"), "(setenv \"X\" \"a\\\"b\")\n");
        assert_eq!(Shell::Sh.unset("X"), "unset X\n");
        assert_eq!(Shell::Fish.unset("X"), "set -e X;\n");
        assert_eq!(Shell::Tcsh.unset("X"), "unsetenv X;\n");
        assert_eq!(Shell::Cmd.unset("X"), "SET X=\n");
        assert_eq!(Shell::Emacs.unset("X"), "(setenv \"X\" nil)\n");
    }

    #[test]
    fn hints_say_how_to_eval() {
        assert_eq!(
            Shell::Bash.usage_hint("berth env dev"),
            "# Run this command to configure your shell:\n# eval \"$(berth env dev)\"\n"
        );
        assert!(Shell::Powershell
            .usage_hint("berth env dev")
            .ends_with("# & berth env dev | Invoke-Expression\n"));
        assert!(Shell::Cmd.usage_hint("berth env dev").starts_with("REM "));
    }

    #[test]
    fn program_names_map_to_shells() {
        assert_eq!(Shell::from_program("bash"), Some(Shell::Bash));
        assert_eq!(Shell::from_program("dash"), Some(Shell::Sh));
        assert_eq!(Shell::from_program("csh"), Some(Shell::Tcsh));
        assert_eq!(Shell::from_program("pwsh"), Some(Shell::Powershell));
        assert_eq!(Shell::from_program("nushell"), None);
    }
}
