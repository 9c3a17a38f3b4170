//! alloy `sol!` bindings generated from the committed artifacts in `contracts/artifacts/`.
//!
//! The artifacts are rebuilt and compared by `make artifacts-check`, so these bindings always
//! match the Solidity sources; cargo itself never needs node or forge.

// The generated code has items the workspace lints would flag (undocumented fields of the ABI's
// structs and events); their documentation is the Solidity NatSpec.
#![allow(missing_docs, unreachable_pub, clippy::too_many_arguments)]

alloy::sol!(
    /// The Sluice escrow (v1 Tempo Stream Channel ABI + `settleBatch`). Its structs, enums,
    /// events and errors live in [`ISluiceEscrow`](crate::ISluiceEscrow).
    #[sol(rpc, all_derives)]
    SluiceEscrow,
    "artifacts/SluiceEscrow.json"
);

alloy::sol!(
    /// A plain ERC-20 with a public `mint`, for tests and local demos.
    #[sol(rpc, all_derives)]
    TestToken,
    "artifacts/TestToken.json"
);

alloy::sol!(
    /// An ERC-20 whose `transfer`/`transferFrom` return nothing.
    #[sol(rpc, all_derives)]
    NoBoolToken,
    "artifacts/NoBoolToken.json"
);

alloy::sol!(
    /// An ERC-20 that burns a fee (basis points) of every transfer.
    #[sol(rpc, all_derives)]
    FeeOnTransferToken,
    "artifacts/FeeOnTransferToken.json"
);

alloy::sol!(
    /// An ERC-20 that can be armed to call back into a target during transfers.
    #[sol(rpc, all_derives)]
    ReentrantToken,
    "artifacts/ReentrantToken.json"
);
