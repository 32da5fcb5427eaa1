//! Build script: records the git commit the binary is built from, for
//! `wsbridge --version`. `WSBRIDGE_GIT_COMMIT` in the environment wins (a
//! Docker build has no `.git`: pass it as a build argument); without either
//! the commit is "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WSBRIDGE_GIT_COMMIT");
    let commit = std::env::var("WSBRIDGE_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=WSBRIDGE_GIT_COMMIT={commit}");
}

/// `git rev-parse --short=12 HEAD`, and the files that make it change, so a
/// new commit rebuilds the version string and nothing else does.
fn git_commit() -> Option<String> {
    let run = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"]).filter(|c| !c.is_empty())?;
    // In a worktree `.git` is a file; ask git where HEAD and the refs live.
    for path in [
        run(&["rev-parse", "--git-path", "HEAD"]),
        run(&["rev-parse", "--git-path", "refs"]),
        run(&["rev-parse", "--git-common-dir"]).map(|d| format!("{d}/packed-refs")),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    Some(commit)
}
