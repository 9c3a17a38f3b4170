//! ABI compatibility with the v1 escrow ABI that the mppx 0.11.0 client uses: every function and
//! event of it exists in `SluiceEscrow` with the same types, names (viem decodes tuples and logs
//! into objects by name), indexing and mutability. Errors keep their names but carry parameters.

use alloy::json_abi::{JsonAbi, Param};

fn load(path: &str) -> JsonAbi {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    // The committed artifact wraps the ABI; the mppx file is the bare ABI array.
    let abi = value.get("abi").cloned().unwrap_or(value);
    serde_json::from_value(abi).unwrap_or_else(|e| panic!("ABI in {}: {e}", full.display()))
}

/// A parameter as `name:type(components…)`, without its `internalType` (which names the
/// Solidity struct's contract and differs by design).
fn shape(p: &Param) -> String {
    let components: Vec<String> = p.components.iter().map(shape).collect();
    format!("{}:{}({})", p.name, p.ty, components.join(","))
}

#[test]
fn sluice_escrow_provides_the_mppx_v1_escrow_abi() {
    let mppx = load("../testdata/mppx-0.11.0/legacy-escrow-abi.json");
    let ours = load("artifacts/SluiceEscrow.json");

    let mut functions = 0;
    for theirs in mppx.functions() {
        let candidates = ours
            .function(&theirs.name)
            .unwrap_or_else(|| panic!("missing function {}", theirs.name));
        let mine = candidates
            .iter()
            .find(|f| f.signature() == theirs.signature())
            .unwrap_or_else(|| panic!("no function with signature {}", theirs.signature()));
        assert_eq!(
            mine.selector(),
            theirs.selector(),
            "{} selector",
            theirs.name
        );
        assert_eq!(
            mine.state_mutability, theirs.state_mutability,
            "{} mutability",
            theirs.name
        );
        let mine_out: Vec<_> = mine.outputs.iter().map(shape).collect();
        let theirs_out: Vec<_> = theirs.outputs.iter().map(shape).collect();
        assert_eq!(
            mine_out, theirs_out,
            "{} outputs (types and names)",
            theirs.name
        );
        functions += 1;
    }
    assert_eq!(functions, 15, "every mppx v1 function was compared");

    let mut events = 0;
    for theirs in mppx.events() {
        let mine = ours
            .event(&theirs.name)
            .and_then(|e| e.first())
            .unwrap_or_else(|| panic!("missing event {}", theirs.name));
        assert_eq!(mine.selector(), theirs.selector(), "{} topic", theirs.name);
        assert_eq!(
            mine.anonymous, theirs.anonymous,
            "{} anonymous",
            theirs.name
        );
        let mine_inputs: Vec<_> = mine
            .inputs
            .iter()
            .map(|p| (&p.name, &p.ty, p.indexed))
            .collect();
        let theirs_inputs: Vec<_> = theirs
            .inputs
            .iter()
            .map(|p| (&p.name, &p.ty, p.indexed))
            .collect();
        assert_eq!(mine_inputs, theirs_inputs, "{} inputs", theirs.name);
        events += 1;
    }
    assert_eq!(events, 7, "every mppx v1 event was compared");

    for theirs in mppx.errors() {
        assert!(
            ours.error(&theirs.name).is_some(),
            "error {} kept (with parameters)",
            theirs.name
        );
    }
}
