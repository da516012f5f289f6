//! Command-line steering for Linux guests on the software KVM: kernel parameters that keep
//! Linux away from what that emulator cannot run (XSAVE, POPCNT, CMPXCHG16B, CLAC, SSSE3/AVX
//! code in crypto) and skip boot work that is pure emulation cost there (crypto self-tests,
//! the W+X page-table scan, a few initcalls), and away from hypercalls (`vmcall` never
//! returns there: PV spinlocks' kick). Measured in `shared/PLATFORM.md`: without these,
//! Debian's 6.1 kernel stops in SLUB, in the FPU set-up or in `blake2s_compress_ssse3`, or
//! spends over ten minutes in self-tests before `/init`.
//!
//! CPUID masks set with KVM_SET_CPUID2 do not reach the guest on that emulator; the kernel
//! command line does. Nothing here applies on hardware KVM.

/// One kernel parameter hvprobe adds, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteeringWord {
    /// The parameter as added (`key=value` or a bare flag).
    pub word: &'static str,
    /// Why, in a few words, for the boot note.
    pub why: &'static str,
}

impl SteeringWord {
    /// The part before `=` (the whole word for a flag): a user's word with the same key wins.
    pub fn key(&self) -> &'static str {
        key_of(self.word)
    }
}

fn key_of(word: &str) -> &str {
    word.split_once('=').map_or(word, |(k, _)| k)
}

/// What hvprobe adds to a Linux guest's command line on the software KVM, in order.
pub const LINUX_STEERING: [SteeringWord; 7] = [
    SteeringWord {
        word: "noxsave",
        why: "the emulator cannot run xsave/xrstor",
    },
    SteeringWord {
        word: "clearcpuid=popcnt,cx16,smap,ssse3,avx,avx2,avx512f",
        why: "the emulator cannot run popcnt, cmpxchg16b, clac or SSSE3/AVX crypto code",
    },
    SteeringWord {
        word: "cryptomgr.notests=1",
        why: "crypto self-tests: minutes of emulated ring-0 code",
    },
    SteeringWord {
        word: "nowatchdog",
        why: "the lockup watchdog misreads emulated time",
    },
    SteeringWord {
        word: "nopvspin",
        why: "a contended PV spinlock kicks the halted waiter with `vmcall`, which hangs \
              this emulator's vCPU: both vCPUs stop for good",
    },
    SteeringWord {
        word: "rodata=off",
        why: "skips the W+X page-table scan, 94 s emulated",
    },
    SteeringWord {
        word: "initcall_blacklist=trace_eval_init,tracer_init_tracefs,\
               ftrace_check_for_weak_functions,cubictcp_register,bpf_rstat_kfunc_init,\
               kfunc_init,bpf_prog_test_run_init,load_system_certificate_list,\
               crypto_kdf108_init,init_encrypted,slab_sysfs_init",
        why: "initcalls that are pure emulation cost: certificate load 62 s, BTF kfunc \
              sets, tracefs, slab sysfs",
    },
];

/// The result of steering a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steered {
    /// The command line the guest gets.
    pub cmdline: String,
    /// The words hvprobe added.
    pub added: Vec<&'static str>,
    /// Keys the user set already (their value wins; hvprobe's would have been different).
    pub user_won: Vec<String>,
}

/// Adds the [`LINUX_STEERING`] words to `cmdline`, except those whose key the user already
/// set (the user's word wins, and is reported in [`Steered::user_won`] unless it is the same
/// word).
pub fn steer_linux_cmdline(cmdline: &str) -> Steered {
    let mut out = cmdline.trim_end().to_string();
    let mut added = Vec::new();
    let mut user_won = Vec::new();
    for w in &LINUX_STEERING {
        match cmdline.split_whitespace().find(|u| key_of(u) == w.key()) {
            Some(u) if u == w.word => {}
            Some(u) => user_won.push(u.to_string()),
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(w.word);
                added.push(w.word);
            }
        }
    }
    Steered {
        cmdline: out,
        added,
        user_won,
    }
}

/// The boot note for a steered command line: what was added and why, and what the user's own
/// words replaced. `None` when nothing was added or replaced.
pub fn note(s: &Steered) -> Option<String> {
    if s.added.is_empty() && s.user_won.is_empty() {
        return None;
    }
    let mut text = String::from("software KVM (kvm_pvm) detected: steering Linux");
    if !s.added.is_empty() {
        text.push_str(": added to its command line:");
        for w in LINUX_STEERING.iter().filter(|w| s.added.contains(&w.word)) {
            let shown = if w.word.len() > 40 {
                format!(
                    "{}=... ({} entries)",
                    w.key(),
                    w.word.matches(',').count() + 1
                )
            } else {
                w.word.to_string()
            };
            text.push_str(&format!(" `{shown}` ({});", w.why));
        }
        text.pop();
    }
    if !s.user_won.is_empty() {
        text.push_str(&format!(
            "; your {} kept instead of hvprobe's (the guest may meet what this emulator \
             cannot run)",
            s.user_won.join(" ")
        ));
    }
    text.push_str("; --no-steering turns this off");
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_every_word_once_in_order() {
        let s = steer_linux_cmdline("console=ttyS0 nokaslr ");
        assert!(
            s.cmdline
                .starts_with("console=ttyS0 nokaslr noxsave clearcpuid=")
        );
        assert_eq!(s.added.len(), LINUX_STEERING.len());
        assert!(s.user_won.is_empty());
        assert!(!s.cmdline.contains("  "));
        // applying it again adds nothing
        let again = steer_linux_cmdline(&s.cmdline);
        assert_eq!(again.cmdline, s.cmdline);
        assert!(again.added.is_empty() && note(&again).is_none());
    }

    #[test]
    fn the_users_word_with_the_same_key_wins_and_is_reported() {
        let s = steer_linux_cmdline("console=ttyS0 clearcpuid=pku rodata=on");
        assert!(s.cmdline.contains("clearcpuid=pku"));
        assert!(!s.cmdline.contains("clearcpuid=popcnt"));
        assert!(!s.cmdline.contains("rodata=off"));
        assert_eq!(s.user_won, vec!["clearcpuid=pku", "rodata=on"]);
        let n = note(&s).unwrap();
        assert!(n.contains("your clearcpuid=pku rodata=on kept"), "{n}");
        assert!(n.contains("`noxsave`"), "{n}");
        assert!(n.contains("initcall_blacklist=... (11 entries)"), "{n}");
    }

    #[test]
    fn the_blacklist_word_has_no_spaces() {
        for w in &LINUX_STEERING {
            assert!(!w.word.contains(char::is_whitespace), "{}", w.word);
        }
    }
}
