// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {Vm} from "./Vm.sol";
import {ISluiceEscrow} from "../../src/interfaces/ISluiceEscrow.sol";
import {TestToken} from "../tokens/TestToken.sol";

/// @title TestUtils
/// @notice Cheatcode handle, bounded-input helper and signature builders shared by the tests and
///         the invariant handler.
abstract contract TestUtils {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    /// @dev Deploys the escrow from its compiled artifact. Tests never import the escrow's source,
    ///      so they compile with the fast legacy pipeline while the escrow itself is built with
    ///      via-IR exactly as shipped (see foundry.toml). A plain CREATE, so `vm.prank` applies.
    function _deployEscrow(string memory name, string memory version, uint64 grace)
        internal
        returns (ISluiceEscrow deployed)
    {
        bytes memory init =
            abi.encodePacked(vm.getCode("SluiceEscrow.sol:SluiceEscrow"), abi.encode(name, version, grace));
        assembly {
            deployed := create(0, add(init, 0x20), mload(init))
        }
        require(address(deployed) != address(0), "escrow deployment failed");
    }

    /// @dev Maps any `x` into [lo, hi] (inclusive), keeping small values stable.
    function _bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (x >= lo && x <= hi) return x;
        uint256 size = hi - lo;
        if (size == type(uint256).max) return x;
        return lo + (x % (size + 1));
    }

    /// @dev A 65-byte r ‖ s ‖ v voucher signature (v is 27 or 28).
    function _sign(ISluiceEscrow escrow, uint256 key, bytes32 channelId, uint128 amount)
        internal
        view
        returns (bytes memory)
    {
        return _signDigest(key, _digestOf(escrow, channelId, amount));
    }

    function _signDigest(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev The same signature in EIP-2098 compact form (r ‖ yParity·2^255 + s).
    function _signCompact(ISluiceEscrow escrow, uint256 key, bytes32 channelId, uint128 amount)
        internal
        view
        returns (bytes memory)
    {
        (bytes32 r, bytes32 vs) = _signCompactParts(escrow, key, channelId, amount);
        return abi.encodePacked(r, vs);
    }

    function _signCompactParts(ISluiceEscrow escrow, uint256 key, bytes32 channelId, uint128 amount)
        internal
        view
        returns (bytes32 r, bytes32 vs)
    {
        (uint8 v, bytes32 r_, bytes32 s) = vm.sign(key, _digestOf(escrow, channelId, amount));
        return (r_, bytes32(uint256(s) | (uint256(v - 27) << 255)));
    }

    /// @dev The malleated twin of a valid signature: (r, n - s, v flipped).
    function _highS(bytes memory sig) internal pure returns (bytes memory) {
        (bytes32 r, bytes32 s, uint8 v) = _split(sig);
        return abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27));
    }

    function _split(bytes memory sig) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        require(sig.length == 65, "split: not 65 bytes");
        assembly {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
    }

    function _digestOf(ISluiceEscrow escrow, bytes32 channelId, uint128 amount) internal view returns (bytes32) {
        return escrow.getVoucherDigest(channelId, amount);
    }

    /// @dev The reference EIP-712 digest, computed here without the escrow.
    function _expectedDigest(
        string memory name,
        string memory version,
        uint256 chainId,
        address verifyingContract,
        bytes32 channelId,
        uint128 amount
    ) internal pure returns (bytes32) {
        bytes32 separator = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256(bytes(name)),
                keccak256(bytes(version)),
                chainId,
                verifyingContract
            )
        );
        bytes32 structHash =
            keccak256(abi.encode(keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)"), channelId, amount));
        return keccak256(abi.encodePacked(hex"1901", separator, structHash));
    }

    /// @dev The number of `Transfer(from, to, ·)` logs of `token` among `logs`, and their sum.
    function _transfersTo(Vm.Log[] memory logs, address token, address from, address to)
        internal
        pure
        returns (uint256 count, uint256 sum)
    {
        bytes32 topic = keccak256("Transfer(address,address,uint256)");
        for (uint256 i; i < logs.length; ++i) {
            Vm.Log memory l = logs[i];
            if (
                l.emitter == token && l.topics.length == 3 && l.topics[0] == topic
                    && l.topics[1] == bytes32(uint256(uint160(from))) && l.topics[2] == bytes32(uint256(uint160(to)))
            ) {
                count += 1;
                sum += abi.decode(l.data, (uint256));
            }
        }
    }

    /// @dev The number of logs of `emitter` with first topic `topic0`.
    function _countLogs(Vm.Log[] memory logs, address emitter, bytes32 topic0) internal pure returns (uint256 count) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == emitter && logs[i].topics.length > 0 && logs[i].topics[0] == topic0) count += 1;
        }
    }
}

/// @title EscrowTestBase
/// @notice A deployed escrow (default profile), a plain token, and funded actors with keys.
abstract contract EscrowTestBase is TestUtils {
    ISluiceEscrow internal escrow;
    TestToken internal token;

    // Anvil's well-known test keys #0, #1, #2, #3 (also used by the mppx vectors).
    uint256 internal constant PAYER_KEY = 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80;
    uint256 internal constant PAYEE_KEY = 0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d;
    uint256 internal constant DELEGATE_KEY = 0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a;
    uint256 internal constant STRANGER_KEY = 0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6;

    address internal payer;
    address internal payee;
    address internal delegate;
    address internal stranger;

    uint128 internal constant DEPOSIT = 1_000_000;
    bytes32 internal constant SALT = bytes32(uint256(0xaaaa));
    uint64 internal constant GRACE = 15 minutes;
    uint64 internal constant START = 1_700_000_000;

    function setUp() public virtual {
        payer = vm.addr(PAYER_KEY);
        payee = vm.addr(PAYEE_KEY);
        delegate = vm.addr(DELEGATE_KEY);
        stranger = vm.addr(STRANGER_KEY);
        vm.label(payer, "payer");
        vm.label(payee, "payee");
        vm.label(delegate, "delegate");
        vm.label(stranger, "stranger");

        escrow = _deployEscrow("", "", 0);
        token = new TestToken("Test USD", "TUSD", 6);
        _fund(address(token), payer, 1e30);
        _fund(address(token), stranger, 1e30);
        vm.warp(START);
    }

    function _fund(address tokenAddr, address who, uint256 amount) internal {
        TestToken(tokenAddr).mint(who, amount);
        vm.prank(who);
        TestToken(tokenAddr).approve(address(escrow), type(uint256).max);
    }

    function _open(uint128 deposit) internal returns (bytes32) {
        return _openWith(address(token), deposit, SALT, address(0));
    }

    function _openWith(address tokenAddr, uint128 deposit, bytes32 salt, address signer) internal returns (bytes32) {
        vm.prank(payer);
        return escrow.open(payee, tokenAddr, deposit, salt, signer);
    }

    function _settle(bytes32 id, uint128 amount) internal {
        bytes memory sig = _sign(escrow, PAYER_KEY, id, amount);
        vm.prank(payee);
        escrow.settle(id, amount, sig);
    }

    function _item(address tokenAddr, bytes32 salt, address signer, uint128 amount, uint256 key)
        internal
        view
        returns (ISluiceEscrow.SettleItem memory item)
    {
        bytes32 id = escrow.computeChannelId(payer, payee, tokenAddr, salt, signer);
        (bytes32 r, bytes32 vs) = _signCompactParts(escrow, key, id, amount);
        item = ISluiceEscrow.SettleItem({
            payer: payer,
            token: tokenAddr,
            salt: salt,
            authorizedSigner: signer,
            cumulativeAmount: amount,
            r: r,
            yParityAndS: vs
        });
    }

    function _assertChannel(
        bytes32 id,
        bool finalized,
        uint64 closeRequestedAt,
        uint128 deposit,
        uint128 settled,
        string memory what
    ) internal view {
        ISluiceEscrow.Channel memory c = escrow.getChannel(id);
        vm.assertEq(c.finalized, finalized, string.concat(what, ": finalized"));
        vm.assertEq(uint256(c.closeRequestedAt), uint256(closeRequestedAt), string.concat(what, ": closeRequestedAt"));
        vm.assertEq(uint256(c.deposit), uint256(deposit), string.concat(what, ": deposit"));
        vm.assertEq(uint256(c.settled), uint256(settled), string.concat(what, ": settled"));
    }

    function _assertTombstone(bytes32 id) internal view {
        ISluiceEscrow.Channel memory c = escrow.getChannel(id);
        vm.assertTrue(c.finalized, "tombstone: finalized");
        vm.assertEq(c.payer, address(0), "tombstone: payer");
        vm.assertEq(c.payee, address(0), "tombstone: payee");
        vm.assertEq(c.token, address(0), "tombstone: token");
        vm.assertEq(c.authorizedSigner, address(0), "tombstone: signer");
        vm.assertEq(uint256(c.deposit), 0, "tombstone: deposit");
        vm.assertEq(uint256(c.settled), 0, "tombstone: settled");
        vm.assertEq(uint256(c.closeRequestedAt), 0, "tombstone: closeRequestedAt");
    }
}
