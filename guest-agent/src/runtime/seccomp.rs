//! Seccomp: an OCI seccomp profile compiled to BPF in pure Rust
//! (`seccompiler`, from rust-vmm) and installed on the container's init.
//!
//! seccompiler builds filters with one action on match and one on
//! mismatch, while a profile gives each rule its own action. So a profile
//! becomes several filters, which the kernel runs together, taking the
//! most restrictive answer (kill > trap > errno > trace > log > allow):
//!
//! - a base filter: every syscall some rule names (under its conditions)
//!   is allowed, everything else gets the default action;
//! - one filter per other action: its rules get that action, the rest are
//!   allowed.
//!
//! Syscall names are resolved for the architecture the agent runs on; a
//! name this architecture lacks is skipped, as libseccomp does.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::RuntimeError;

fn invalid(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Io {
        action: "compile the seccomp profile".into(),
        source: std::io::Error::other(reason.into()),
    }
}

fn target_arch() -> Result<TargetArch, RuntimeError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(invalid(format!("seccomp is not supported on {other}"))),
    }
}

/// What a profile action does, with the errno it returns where it has one.
fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, RuntimeError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(nix::libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Trace(errno.unwrap_or(nix::libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(
                "SCMP_ACT_NOTIFY (a seccomp agent) is not supported yet",
            ))
        }
    })
}

/// A sortable key for an action, to group rules by it.
fn key(a: &SeccompAction) -> u32 {
    u32::from(a.clone())
}

/// The conditions of one rule; `None` when it has none (always matches).
fn rule(syscall: &LinuxSyscall) -> Result<Option<SeccompRule>, RuntimeError> {
    let args = syscall.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Ok(None);
    }
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        let op = match arg.op() {
            LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
            LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
            LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
            LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
            LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
            LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
            // libseccomp's MASKED_EQ: (arg & value) == valueTwo.
            LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(arg.value()),
        };
        let value = match arg.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => arg.value_two().unwrap_or(0),
            _ => arg.value(),
        };
        let index = u8::try_from(arg.index())
            .map_err(|_| invalid(format!("argument index {} is out of range", arg.index())))?;
        conditions.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| invalid(format!("argument {index}: {e}")))?,
        );
    }
    SeccompRule::new(conditions)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// Rules per syscall number; an empty list matches unconditionally.
#[derive(Default)]
struct RuleSet {
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    unconditional: BTreeSet<i64>,
}

impl RuleSet {
    fn add(&mut self, nr: i64, rule: Option<SeccompRule>) {
        let rules = self.rules.entry(nr).or_default();
        match rule {
            _ if self.unconditional.contains(&nr) => {}
            None => {
                rules.clear();
                self.unconditional.insert(nr);
            }
            Some(r) => rules.push(r),
        }
    }

    fn compile(
        self,
        on_mismatch: SeccompAction,
        on_match: SeccompAction,
        arch: TargetArch,
    ) -> Result<BpfProgram, RuntimeError> {
        let filter = SeccompFilter::new(self.rules, on_mismatch, on_match, arch)
            .map_err(|e| invalid(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| invalid(e.to_string()))
    }
}

/// Compiles `profile` into the filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, RuntimeError> {
    let arch = target_arch()?;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut named = RuleSet::default();
    let mut by_action: BTreeMap<u32, (SeccompAction, RuleSet)> = BTreeMap::new();
    for syscall in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        let cond = rule(syscall)?;
        for name in syscall.names() {
            let Ok(sysno) = syscalls::Sysno::from_str(name) else {
                tracing::debug!(syscall = %name, "not a syscall on this architecture; skipped");
                continue;
            };
            let nr = i64::from(sysno.id());
            if act != default {
                named.add(nr, cond.clone());
            }
            if act != SeccompAction::Allow {
                by_action
                    .entry(key(&act))
                    .or_insert_with(|| (act.clone(), RuleSet::default()))
                    .1
                    .add(nr, cond.clone());
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(named.compile(default.clone(), SeccompAction::Allow, arch)?);
    }
    for (_, (act, rules)) in by_action {
        if act != default {
            programs.push(rules.compile(SeccompAction::Allow, act, arch)?);
        }
    }
    Ok(programs)
}

/// Installs `program` on the calling thread. Needs `no_new_privs` or
/// CAP_SYS_ADMIN; unlike seccompiler's own helper, it does not turn on
/// `no_new_privs`, which stays the spec's choice.
pub fn install(program: &BpfProgram) -> Result<(), RuntimeError> {
    let len = u16::try_from(program.len())
        .map_err(|_| invalid("the filter is longer than the kernel takes"))?;
    let fprog = nix::libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut nix::libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the
    // kernel copies the filter and keeps no reference to our memory.
    let rc = unsafe {
        nix::libc::prctl(
            nix::libc::PR_SET_SECCOMP,
            nix::libc::SECCOMP_MODE_FILTER,
            &fprog as *const nix::libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(RuntimeError::Io {
            action: "install the seccomp filter".into(),
            source: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn one_filter_per_action_besides_the_default() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["no_such_syscall"], "action": "SCMP_ACT_KILL"},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        // Allow by default: no base filter; one ERRNO filter. The KILL rule
        // names no syscall of this architecture, so it makes no filter.
        assert_eq!(compile(&p).unwrap().len(), 1);

        let deny = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]
        }));
        assert_eq!(compile(&deny).unwrap().len(), 1);

        // A profile that denies by default with no exceptions still compiles.
        let nothing = profile(serde_json::json!({"defaultAction": "SCMP_ACT_KILL_PROCESS"}));
        assert_eq!(compile(&nothing).unwrap().len(), 1);
    }

    #[test]
    fn notify_is_refused() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(compile(&p).unwrap_err().to_string().contains("NOTIFY"));
    }
}
