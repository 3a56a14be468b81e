//! Shell completions and man pages, generated from the clap definitions so they never drift.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Prints the completion script for `shell` on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "berthctl", &mut std::io::stdout());
    Ok(())
}

/// Writes `berthctl.1` and `berthctl-<command>.1` into `dir` (made if missing).
pub(crate) fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(crate::Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        crate::Cli::command().debug_assert();
    }

    #[test]
    fn completions_name_every_command_in_every_shell() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut crate::Cli::command(), "berthctl", &mut buf);
            let text = String::from_utf8(buf).expect("utf-8");
            for cmd in ["ps", "capacity", "drain", "undrain", "logs"] {
                assert!(text.contains(cmd), "{shell}: {cmd}");
            }
        }
    }

    #[test]
    fn man_pages_cover_every_command() {
        let dir = std::env::temp_dir().join(format!("berthctl-man-{}", std::process::id()));
        man(&dir).expect("writes");
        for page in [
            "berthctl.1",
            "berthctl-ps.1",
            "berthctl-drain.1",
            "berthctl-logs.1",
        ] {
            let text = std::fs::read_to_string(dir.join(page)).expect(page);
            assert!(text.contains(".TH"), "{page} is a man page");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
