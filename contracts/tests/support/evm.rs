//! A minimal in-process chain on revm: deploy the committed artifacts, send transactions from
//! any address (no signatures needed: the EVM is driven directly), read views, move time.

use std::collections::HashMap;

use alloy::{
    primitives::{Address, Bytes, Log, TxKind, U256},
    sol_types::SolCall,
};
use revm::{
    Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext, MainnetEvm,
    context::{TxEnv, result::ExecutionResult},
    database::{CacheDB, EmptyDB},
    handler::MainnetContext,
    primitives::hardfork::SpecId,
};

type Db = CacheDB<EmptyDB>;

/// What a transaction did.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// It succeeded with these logs and return data.
    Success {
        logs: Vec<Log>,
        output: Bytes,
        gas_used: u64,
    },
    /// It reverted with this revert data.
    Revert(Bytes),
    /// It halted (out of gas, invalid opcode, ...).
    Halt(String),
}

impl Outcome {
    /// The logs of a successful transaction; panics with the revert otherwise.
    pub(crate) fn logs(&self) -> &[Log] {
        match self {
            Outcome::Success { logs, .. } => logs,
            other => panic!("expected success, got {other:?}"),
        }
    }

    /// The return data of a successful transaction; panics with the revert otherwise.
    pub(crate) fn output(&self) -> &Bytes {
        match self {
            Outcome::Success { output, .. } => output,
            other => panic!("expected success, got {other:?}"),
        }
    }

    /// The revert data; panics if the transaction did not revert.
    pub(crate) fn revert_data(&self) -> &Bytes {
        match self {
            Outcome::Revert(data) => data,
            other => panic!("expected a revert, got {other:?}"),
        }
    }
}

/// An in-process chain with one block whose timestamp the test controls.
pub(crate) struct Chain {
    evm: MainnetEvm<MainnetContext<Db>>,
    nonces: HashMap<Address, u64>,
    chain_id: u64,
    now: u64,
}

const GAS_LIMIT: u64 = 30_000_000;

impl Chain {
    /// A fresh chain with the given id, starting at `now` (seconds). Gas is free (price and base
    /// fee zero), so accounts need no ETH: the tests are about contract state.
    pub(crate) fn new(chain_id: u64, now: u64) -> Self {
        let evm = Context::mainnet()
            .with_db(Db::default())
            .modify_cfg_chained(|cfg| {
                cfg.spec = SpecId::PRAGUE;
                cfg.chain_id = chain_id;
            })
            .modify_block_chained(|block| {
                block.timestamp = U256::from(now);
                block.number = U256::from(1);
                block.gas_limit = GAS_LIMIT;
                block.basefee = 0;
            })
            .build_mainnet();
        Self {
            evm,
            nonces: HashMap::new(),
            chain_id,
            now,
        }
    }

    /// The current block timestamp.
    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    /// Moves time forward.
    pub(crate) fn warp(&mut self, seconds: u64) {
        self.now += seconds;
        let now = self.now;
        self.evm.ctx.modify_block(|block| {
            block.timestamp = U256::from(now);
            block.number += U256::from(1);
        });
    }

    fn tx(&mut self, from: Address, kind: TxKind, data: Bytes) -> TxEnv {
        let nonce = *self.nonces.get(&from).unwrap_or(&0);
        TxEnv::builder()
            .caller(from)
            .kind(kind)
            .data(data)
            .nonce(nonce)
            .gas_limit(GAS_LIMIT)
            .gas_price(0)
            .chain_id(Some(self.chain_id))
            .build_fill()
    }

    fn run(&mut self, from: Address, kind: TxKind, data: Bytes) -> (Outcome, Option<Address>) {
        let tx = self.tx(from, kind, data);
        let result = self
            .evm
            .transact_commit(tx)
            .unwrap_or_else(|e| panic!("transaction from {from} invalid: {e:?}"));
        *self.nonces.entry(from).or_insert(0) += 1;
        let created = result.created_address();
        let outcome = match result {
            ExecutionResult::Success {
                logs, output, gas, ..
            } => Outcome::Success {
                logs,
                output: output.into_data(),
                gas_used: gas.tx_gas_used(),
            },
            ExecutionResult::Revert { output, .. } => Outcome::Revert(output),
            ExecutionResult::Halt { reason, .. } => Outcome::Halt(format!("{reason:?}")),
        };
        (outcome, created)
    }

    /// Deploys `init_code` (creation bytecode + encoded constructor arguments) from `from`.
    pub(crate) fn deploy(&mut self, from: Address, init_code: Vec<u8>) -> Address {
        let (outcome, created) = self.run(from, TxKind::Create, init_code.into());
        match (outcome, created) {
            (Outcome::Success { .. }, Some(address)) => address,
            (other, _) => panic!("deployment from {from} failed: {other:?}"),
        }
    }

    /// Sends `call` to `to` from `from` and commits the result.
    pub(crate) fn send<C: SolCall>(&mut self, from: Address, to: Address, call: &C) -> Outcome {
        self.run(from, TxKind::Call(to), call.abi_encode().into()).0
    }

    /// Sends `call` and requires success.
    pub(crate) fn send_ok<C: SolCall>(&mut self, from: Address, to: Address, call: &C) -> Outcome {
        let outcome = self.send(from, to, call);
        if !matches!(outcome, Outcome::Success { .. }) {
            panic!("{} from {from} failed: {outcome:?}", C::SIGNATURE);
        }
        outcome
    }

    /// Calls a view without committing anything.
    pub(crate) fn view<C: SolCall>(&mut self, to: Address, call: &C) -> C::Return {
        let caller = Address::repeat_byte(0xee);
        let tx = self.tx(caller, TxKind::Call(to), call.abi_encode().into());
        let result = self.evm.transact(tx).expect("view call is valid").result;
        match result {
            ExecutionResult::Success { output, .. } => C::abi_decode_returns(output.data())
                .unwrap_or_else(|e| panic!("decoding {}: {e}", C::SIGNATURE)),
            other => panic!("view {} failed: {other:?}", C::SIGNATURE),
        }
    }
}
