//! `keys.rs`: the keys file (`--keys-file`), parsed whole. The input is a
//! file's text; its bytes also build a second file line by line from
//! known keys, whose grants are checked against what was written.
//!
//! Properties: never panics; a refused file says which line (1 to the
//! number of lines); in an accepted file every name is a DNS label and
//! every port is 1–65535, and the two views of a grant agree (a key is an
//! owner of name N exactly when its grant lists N; ports likewise); a
//! file written from grants reads back as those grants.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::{Arbitrary, Unstructured};
use burrow::keys::KeysFile;
use burrow::subdomain::is_valid_label;
use libfuzzer_sys::fuzz_target;

/// Keys (as in `~/.ssh/*.pub`) and their fingerprints (`ssh-keygen -lf`).
const KEYS: [(&str, &str); 4] = [
    (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN3+lYr/1eimX1rkJodpL0Qv+SxY+UfU8pNmCKepZn1T",
        "SHA256:AvDrGmsHczxPPPcONJBMmes9JNaY4f14UqpUSYZzJvc",
    ),
    (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAjRyVBT087wJild0u/mn5bheVxB+3fFj3dQYjjQq1p2",
        "SHA256:NSiIILr5ikRiZ5TQZ85Jf9aRDzU7j6tq1fv4jZWcIC4",
    ),
    (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC6QRIBISDxBpw6ha49iR1e8Z5yXX39pnode00CjJOVO",
        "SHA256:2oGAiIIIT7OS/UBwGX+MMUlXkAIdGO3QxBB+ULX3p5A",
    ),
    (
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBMxbapP2JGCETgdnJxhu6DeIfdePRO5YypDpQgwwUfoXprcV4UvbRqnbpcL9VjsJPQCu29Bt7Cj1P5n19N9cH3A=",
        "SHA256:hs9wf6nA04uEjC/ymwsbUd+GepdAKDlwhkI2b10u2YU",
    ),
];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    }
    round_trip(&mut Unstructured::new(data));
});

fn check_text(text: &str) {
    match KeysFile::parse(text) {
        Ok(file) => {
            for (_, fp) in KEYS {
                check_views(&file, fp);
            }
        }
        Err(err) => {
            let message = err.to_string();
            let number: usize = message
                .strip_prefix("line ")
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("{message:?} names no line"));
            assert!((1..=text.lines().count()).contains(&number), "{message:?}");
        }
    }
}

/// The grant of `fp` and the owner tables say the same thing.
fn check_views(file: &KeysFile, fp: &str) {
    let Some(grant) = file.grant(fp) else {
        return;
    };
    for name in &grant.names {
        assert!(is_valid_label(name), "{name:?}");
        assert!(
            file.owners(name).iter().any(|o| o == fp),
            "{fp} owns {name}"
        );
    }
    for port in &grant.ports {
        assert!(*port > 0);
        assert!(
            file.port_owners(*port).iter().any(|o| o == fp),
            "{fp} owns {port}"
        );
    }
    for name in ["api", "dashboard", "device-7", "db", "a", "x"] {
        let owner = file.owners(name).iter().any(|o| o == fp);
        assert_eq!(
            owner,
            grant.names.iter().any(|n| n == name),
            "{fp} and {name}"
        );
    }
    for port in [22u16, 80, 443, 5432, 20001] {
        let owner = file.port_owners(port).iter().any(|o| o == fp);
        assert_eq!(owner, grant.ports.contains(&port), "{fp} and port {port}");
    }
}

/// One line of a file written from a grant.
#[derive(Arbitrary, Debug)]
struct Line {
    key: u8,
    names: Vec<u8>,
    ports: Vec<u16>,
    connect: Vec<(u8, bool)>,
    comment: Option<u8>,
    quoted: bool,
}

const NAMES: [&str; 6] = ["api", "dashboard", "device-7", "db", "a", "x"];

fn round_trip(u: &mut Unstructured<'_>) {
    let Ok(lines) = Vec::<Line>::arbitrary(u) else {
        return;
    };
    let mut text = String::from("# written by the fuzz target\n\n");
    let mut want: [Option<Want>; 4] = Default::default();
    for line in lines.iter().take(8) {
        let (key, fp) = KEYS[usize::from(line.key) % KEYS.len()];
        let names: Vec<&str> = line
            .names
            .iter()
            .map(|n| NAMES[usize::from(*n) % NAMES.len()])
            .collect();
        let ports: Vec<u16> = line.ports.iter().map(|p| p.max(&1)).copied().collect();
        let connect: Vec<String> = line
            .connect
            .iter()
            .map(|(n, star)| {
                format!(
                    "{}{}",
                    NAMES[usize::from(*n) % NAMES.len()],
                    if *star { "-*" } else { "" }
                )
            })
            .collect();
        let mut options = Vec::new();
        for (option, values) in [
            (
                "names",
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ),
            ("ports", ports.iter().map(u16::to_string).collect()),
            ("connect", connect.clone()),
        ] {
            if values.is_empty() {
                continue;
            }
            options.push(match line.quoted {
                true => format!("{option}=\"{}\"", values.join(",")),
                false => format!("{option}={}", values.join(",")),
            });
        }
        let comment = line
            .comment
            .map(|c| format!(" {}@host-{c}", NAMES[usize::from(c) % NAMES.len()]));
        text.push_str(&format!(
            "{} {key}{}\n",
            options.join(","),
            comment.clone().unwrap_or_default()
        ));
        let slot = want[usize::from(line.key) % KEYS.len()].get_or_insert_with(Want::default);
        slot.names.extend(names.iter().map(|n| n.to_string()));
        slot.ports.extend(ports);
        slot.connect.extend(connect);
        let _ = fp;
    }
    let file = KeysFile::parse(&text).unwrap_or_else(|e| panic!("{text}\nrefused: {e}"));
    for (i, (_, fp)) in KEYS.iter().enumerate() {
        let grant = file.grant(fp);
        let Some(want) = &want[i] else {
            assert!(grant.is_none(), "{fp} is not in\n{text}");
            continue;
        };
        let grant = grant.unwrap_or_else(|| panic!("{fp} missing from\n{text}"));
        let got = Want {
            names: grant.names.iter().cloned().collect(),
            ports: grant.ports.iter().copied().collect(),
            connect: grant.connect.iter().cloned().collect(),
        };
        assert_eq!(&got, want, "what\n{text}\ngrants {fp}");
        check_views(&file, fp);
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Want {
    names: BTreeSet<String>,
    ports: BTreeSet<u16>,
    connect: BTreeSet<String>,
}
