//! The exit codes of every `wardgate` verb, written once: [`Exit`].
//!
//! Owns the number each outcome exits with and the one-line meaning `wardgate --help` prints.
//! Verbs say what they concluded by returning an [`Exit`]; they must never write an exit number
//! of their own, and this table must never give one number two meanings. It lives here rather
//! than in `cli` because the tooling verbs print their own exit code (`diff`'s and `replay`'s
//! `result:` line and `exit` JSON field), and `tooling` may not import `cli`. README.md
//! ("Exit codes") documents the same table for users.

use std::process::ExitCode;

/// How a verb ended. The numbers are an interface for scripts: never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: yes, or nothing to report.
    Ok,
    /// 1: the answer is no.
    No,
    /// 2: the command line cannot be carried out as written.
    Usage,
    /// 3: an input cannot be used.
    Input,
    /// 4: something denied before would now be allowed.
    NewGrants,
    /// 5: wardgate contradicted itself (a bug).
    Internal,
    /// 6: `replay` could not decide more logged requests than `--max-undetermined` allows.
    Undetermined,
}

impl Exit {
    /// Every exit, in numeric order.
    pub(crate) const ALL: [Exit; 7] = [
        Exit::Ok,
        Exit::No,
        Exit::Usage,
        Exit::Input,
        Exit::NewGrants,
        Exit::Internal,
        Exit::Undetermined,
    ];

    /// The process exit status.
    pub(crate) const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::No => 1,
            Exit::Usage => 2,
            Exit::Input => 3,
            Exit::NewGrants => 4,
            Exit::Internal => 5,
            Exit::Undetermined => 6,
        }
    }

    /// What the code means, for `wardgate --help`.
    pub(crate) const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "yes, or nothing to report: valid bundle, allowed request, every test passes, no change",
            Exit::No => "the answer is no: check denies, a test case fails, analyze finds a rule that never decides, diff/replay find only revocations; serve stopped on an error",
            Exit::Usage => "usage: unknown verb or flag, bad value, contradicting flags; serve refused to start (a flag's address, file or setting is unusable)",
            Exit::Input => "input unusable: a bundle, test file or decision log that cannot be read or is invalid (validate's answer for an invalid bundle; a log of which replay read nothing, or less than --min-readable), a name the bundle does not define, an output file that cannot be written",
            Exit::NewGrants => "new grants: diff/replay find requests that would now be allowed; needs review",
            Exit::Internal => "internal error: the analysis disagrees with the engine; please report the bundle",
            Exit::Undetermined => "undetermined: replay could not decide more logged requests than --max-undetermined allows (they depend on data the log does not carry); its counts are incomplete",
        }
    }

    /// The table for `--help`: one `CODE  meaning` line per exit.
    pub(crate) fn help_table() -> String {
        let mut out = String::from("Exit codes (every verb):\n");
        for exit in Exit::ALL {
            out.push_str(&format!("  {}  {}\n", exit.code(), exit.meaning()));
        }
        out
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn every_exit_has_its_own_number_in_order() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, (0..Exit::ALL.len() as u8).collect::<Vec<_>>());
    }
}
