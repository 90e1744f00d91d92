//! The krew package of `kubectl jit`: plugins/package.sh packs the binary and the completion
//! script, and writes a manifest krew accepts for that archive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, process::Command};

#[test]
fn the_krew_manifest_names_the_archive_it_was_built_with() {
    let out = std::env::temp_dir().join(format!("jit-plugin-package-{}", std::process::id()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let packed = Command::new(root.join("plugins/package.sh"))
        .args([env!("CARGO_BIN_EXE_kubectl-jit"), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        packed.status.success(),
        "{}",
        String::from_utf8_lossy(&packed.stderr)
    );
    let archive = String::from_utf8(packed.stdout).unwrap().trim().to_owned();
    let manifest: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("jit.yaml")).unwrap()).unwrap();

    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(
        manifest["metadata"]["name"], "jit",
        "installed as kubectl jit"
    );
    assert_eq!(
        manifest["spec"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platforms = manifest["spec"]["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 1);
    let platform = &platforms[0];
    assert_eq!(platform["bin"], "kubectl-jit");
    assert_eq!(
        platform["selector"]["matchLabels"]["os"],
        std::env::consts::OS
    );
    assert_eq!(platform["uri"], format!("file://{archive}"));
    let bytes = std::fs::read(&archive).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex: String = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(platform["sha256"], hex.as_str());
    assert!(
        !std::fs::read_to_string(out.join("jit.yaml"))
            .unwrap()
            .contains("${"),
        "every placeholder filled"
    );

    // The archive holds what the manifest's files name, executable.
    let listed = Command::new("tar")
        .args(["-tvzf", &archive])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    for file in platform["files"].as_array().unwrap() {
        let name = file["from"].as_str().unwrap();
        let line = listed
            .lines()
            .find(|line| line.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} not in {listed}"));
        assert!(line.starts_with("-rwxr-xr-x"), "{line}");
    }
    // The same binary packs to the same bytes: a release's sha256 can be checked again.
    let again = Command::new(root.join("plugins/package.sh"))
        .args([env!("CARGO_BIN_EXE_kubectl-jit"), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(std::fs::read(&archive).unwrap(), bytes);
    let _ = std::fs::remove_dir_all(&out);
}
