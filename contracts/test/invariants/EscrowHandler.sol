// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestUtils} from "../utils/EscrowTestBase.sol";
import {ISluiceEscrow} from "../../src/interfaces/ISluiceEscrow.sol";
import {TestToken} from "../tokens/TestToken.sol";
import {NoBoolToken} from "../tokens/NoBoolToken.sol";

/// @title EscrowHandler
/// @notice Drives random payers, payees and strangers through every escrow function and keeps a
///         ghost model of what each channel and each party should hold. Every action checks its
///         own outcome against the model (exact balance deltas, expected reverts); the invariant
///         contract then checks the global properties after each call.
contract EscrowHandler is TestUtils {
    /// @notice The ghost of one channel.
    struct Ghost {
        bytes32 id;
        address payer;
        address payee;
        address token;
        bytes32 salt;
        address authorizedSigner;
        uint256 signerKey;
        uint128 deposit;
        uint128 settled;
        uint128 highestSigned;
        uint64 closeRequestedAt;
        bool finalized;
        uint256 paidToPayee;
        uint256 refundedToPayer;
    }

    uint256 internal constant MAX_CHANNELS = 24;
    uint256 internal constant STRANGER_KEY = 0x5757;

    ISluiceEscrow public immutable escrow;
    address[2] public tokens;
    uint256[3] internal payerKeys;
    uint256 internal delegateKey;
    address[2] public payees;
    address public stranger;
    uint64 public immutable grace;

    Ghost[] internal ghosts;
    /// @notice Tokens minted per token (only at construction).
    mapping(address token => uint256) public minted;
    /// @notice How many times each action ran to completion (for the call summary).
    mapping(bytes32 action => uint256) public calls;
    uint256 internal saltNonce;

    constructor(ISluiceEscrow escrow_) {
        escrow = escrow_;
        grace = escrow_.CLOSE_GRACE_PERIOD();
        tokens[0] = address(new TestToken("Test USD", "TUSD", 6));
        tokens[1] = address(new NoBoolToken());
        payerKeys[0] = 0xa11ce;
        payerKeys[1] = 0xb0b;
        payerKeys[2] = 0xca401;
        delegateKey = 0xde1e6a7e;
        payees[0] = address(0xbeef01);
        payees[1] = address(0xbeef02);
        stranger = vm.addr(STRANGER_KEY);
        for (uint256 t; t < 2; ++t) {
            for (uint256 p; p < 3; ++p) {
                address who = vm.addr(payerKeys[p]);
                TestToken(tokens[t]).mint(who, 1e36);
                minted[tokens[t]] += 1e36;
                vm.prank(who);
                TestToken(tokens[t]).approve(address(escrow_), type(uint256).max);
            }
        }
    }

    // ================================================================ views for the invariants

    /// @notice Number of channels ever opened.
    function ghostCount() external view returns (uint256) {
        return ghosts.length;
    }

    /// @notice One channel's ghost.
    function ghost(uint256 i) external view returns (Ghost memory) {
        return ghosts[i];
    }

    /// @notice Every address that can hold tokens in this model, escrow last.
    function holders() external view returns (address[] memory all) {
        all = new address[](7);
        for (uint256 p; p < 3; ++p) {
            all[p] = vm.addr(payerKeys[p]);
        }
        all[3] = payees[0];
        all[4] = payees[1];
        all[5] = stranger;
        all[6] = address(escrow);
    }

    // ================================================================ actions

    /// @notice A payer opens a channel (sometimes with a delegated signer).
    function open(uint256 payerSeed, uint256 payeeSeed, uint256 tokenSeed, uint256 amount, bool delegated) external {
        if (ghosts.length >= MAX_CHANNELS) return;
        uint256 key = payerKeys[payerSeed % 3];
        address payer = vm.addr(key);
        address payee = payees[payeeSeed % 2];
        address token = tokens[tokenSeed % 2];
        uint128 deposit = uint128(_bound(amount, 1, 1e30));
        bytes32 salt = bytes32(++saltNonce);
        address signer = delegated ? vm.addr(delegateKey) : address(0);

        uint256 payerBefore = TestToken(token).balanceOf(payer);
        vm.prank(payer);
        bytes32 id = escrow.open(payee, token, deposit, salt, signer);
        vm.assertEq(payerBefore - TestToken(token).balanceOf(payer), deposit, "open: pulled exactly the deposit");

        ghosts.push(
            Ghost({
                id: id,
                payer: payer,
                payee: payee,
                token: token,
                salt: salt,
                authorizedSigner: signer,
                signerKey: delegated ? delegateKey : key,
                deposit: deposit,
                settled: 0,
                highestSigned: 0,
                closeRequestedAt: 0,
                finalized: false,
                paidToPayee: 0,
                refundedToPayer: 0
            })
        );
        calls["open"]++;
    }

    /// @notice The payer adds to the deposit (cancelling any close request).
    function topUp(uint256 seed, uint256 amount) external {
        (bool found, uint256 i) = _pick(seed, true);
        if (!found) return;
        Ghost storage g = ghosts[i];
        uint256 add = _bound(amount, 1, 1e30);
        vm.prank(g.payer);
        escrow.topUp(g.id, add);
        g.deposit += uint128(add);
        g.closeRequestedAt = 0;
        calls["topUp"]++;
    }

    /// @notice The signer signs a voucher and the payee settles it.
    function settle(uint256 seed, uint256 amount, bool compact) external {
        (bool found, uint256 i) = _pick(seed, true);
        if (!found) return;
        Ghost storage g = ghosts[i];
        if (g.settled == g.deposit) return;
        uint128 cum = uint128(_bound(amount, uint256(g.settled) + 1, g.deposit));
        bytes memory sig = _voucher(g, cum, compact);
        uint256 before = TestToken(g.token).balanceOf(g.payee);
        vm.prank(g.payee);
        escrow.settle(g.id, cum, sig);
        vm.assertEq(TestToken(g.token).balanceOf(g.payee) - before, cum - g.settled, "settle: paid the delta");
        g.paidToPayee += cum - g.settled;
        g.settled = cum;
        calls["settle"]++;
    }

    /// @notice A payee settles several of its channels at once, with some items that must be skipped.
    function settleBatch(uint256 seed, uint256 count) external {
        address payee = payees[seed % 2];
        uint256 n = _bound(count, 1, 6);
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](n);
        uint256[] memory which = new uint256[](n);
        uint128[] memory amounts = new uint128[](n);
        bool[] memory good = new bool[](n);
        uint256 filled;
        for (uint256 k; k < n && ghosts.length > 0; ++k) {
            uint256 r = uint256(keccak256(abi.encode(seed, k)));
            uint256 i = r % ghosts.length;
            Ghost storage g = ghosts[i];
            if (g.payee != payee) continue;
            // Amount anywhere in [0, deposit + 1]; a tenth of the items carry a stranger's signature.
            uint128 cum = uint128(_bound(r >> 32, 0, uint256(g.deposit) + 1));
            bool forged = (r >> 200) % 10 == 0;
            bytes memory sig = forged ? _signCompact(escrow, STRANGER_KEY, g.id, cum) : _voucher(g, cum, true);
            (bytes32 sigR, bytes32 sigVs) = abi.decode(sig, (bytes32, bytes32));
            items[filled] = ISluiceEscrow.SettleItem({
                payer: g.payer,
                token: g.token,
                salt: g.salt,
                authorizedSigner: g.authorizedSigner,
                cumulativeAmount: cum,
                r: sigR,
                yParityAndS: sigVs
            });
            which[filled] = i;
            amounts[filled] = cum;
            good[filled] = !forged;
            filled++;
        }
        if (filled == 0) return;
        assembly {
            mstore(items, filled)
        }

        uint256[2] memory before = [TestToken(tokens[0]).balanceOf(payee), TestToken(tokens[1]).balanceOf(payee)];
        uint256[2] memory expected;
        uint256 expectedCount;
        vm.prank(payee);
        uint256 settledCount = escrow.settleBatch(items);
        for (uint256 k; k < filled; ++k) {
            Ghost storage g = ghosts[which[k]];
            uint128 cum = amounts[k];
            if (!g.finalized && good[k] && cum > g.settled && cum <= g.deposit) {
                uint256 delta = cum - g.settled;
                expected[g.token == tokens[0] ? 0 : 1] += delta;
                g.paidToPayee += delta;
                g.settled = cum;
                expectedCount++;
            }
        }
        vm.assertEq(settledCount, expectedCount, "settleBatch: settled count");
        vm.assertEq(TestToken(tokens[0]).balanceOf(payee) - before[0], expected[0], "settleBatch: token 0 paid");
        vm.assertEq(TestToken(tokens[1]).balanceOf(payee) - before[1], expected[1], "settleBatch: token 1 paid");
        calls["settleBatch"]++;
    }

    /// @notice The payee closes with a voucher (or with nothing more to claim).
    function close(uint256 seed, uint256 amount, bool withVoucher) external {
        (bool found, uint256 i) = _pick(seed, true);
        if (!found) return;
        Ghost storage g = ghosts[i];
        uint128 cum = withVoucher ? uint128(_bound(amount, g.settled, g.deposit)) : g.settled;
        bytes memory sig = cum > g.settled ? _voucher(g, cum, false) : bytes("");
        uint256 payeeBefore = TestToken(g.token).balanceOf(g.payee);
        uint256 payerBefore = TestToken(g.token).balanceOf(g.payer);
        vm.prank(g.payee);
        escrow.close(g.id, cum, sig);
        uint256 delta = cum - g.settled;
        uint256 refund = g.deposit - cum;
        vm.assertEq(TestToken(g.token).balanceOf(g.payee) - payeeBefore, delta, "close: payee delta");
        vm.assertEq(TestToken(g.token).balanceOf(g.payer) - payerBefore, refund, "close: refund");
        g.paidToPayee += delta;
        g.settled = cum;
        g.refundedToPayer = refund;
        g.finalized = true;
        calls["close"]++;
    }

    /// @notice The payer starts (or repeats) a close request.
    function requestClose(uint256 seed) external {
        (bool found, uint256 i) = _pick(seed, true);
        if (!found) return;
        Ghost storage g = ghosts[i];
        vm.prank(g.payer);
        escrow.requestClose(g.id);
        if (g.closeRequestedAt == 0) g.closeRequestedAt = uint64(block.timestamp);
        calls["requestClose"]++;
    }

    /// @notice The payer withdraws; refused unless the grace period of a pending request is over.
    function withdraw(uint256 seed) external {
        (bool found, uint256 i) = _pick(seed, true);
        if (!found) return;
        Ghost storage g = ghosts[i];
        bool ready = g.closeRequestedAt != 0 && block.timestamp >= uint256(g.closeRequestedAt) + grace;
        uint256 payerBefore = TestToken(g.token).balanceOf(g.payer);
        vm.prank(g.payer);
        try escrow.withdraw(g.id) {
            vm.assertTrue(ready, "withdraw: succeeded before the grace period");
            uint256 refund = g.deposit - g.settled;
            vm.assertEq(TestToken(g.token).balanceOf(g.payer) - payerBefore, refund, "withdraw: refund");
            g.refundedToPayer = refund;
            g.finalized = true;
            calls["withdraw"]++;
        } catch (bytes memory reason) {
            vm.assertFalse(ready, "withdraw: refused after the grace period");
            bytes4 sel = bytes4(reason);
            vm.assertTrue(
                sel == ISluiceEscrow.CloseNotReady.selector || sel == ISluiceEscrow.CloseNotRequested.selector,
                "withdraw: typed refusal"
            );
            calls["withdraw refused"]++;
        }
    }

    /// @notice Time passes (up to twice the grace period).
    function warp(uint256 secondsForward) external {
        vm.warp(block.timestamp + _bound(secondsForward, 1, 2 * uint256(grace)));
        calls["warp"]++;
    }

    /// @notice Anybody but the right party tries every guarded function, and a finalized channel
    ///         is re-opened or settled: all must fail with the matching typed error.
    function misuse(uint256 seed, uint256 op) external {
        (bool found, uint256 i) = _pick(seed, false);
        if (!found) return;
        Ghost storage g = ghosts[i];
        // Signed by a stranger: the role and state checks come first, and the ghost's record of
        // what the real signer signed stays meaningful.
        bytes memory sig = _sign(escrow, STRANGER_KEY, g.id, g.deposit);
        address caller = op % 2 == 0 ? stranger : (op % 4 == 1 ? g.payer : g.payee);
        bytes memory data;
        uint256 kind = (op >> 8) % 6;
        if (kind == 0) data = abi.encodeCall(ISluiceEscrow.settle, (g.id, g.deposit, sig));
        else if (kind == 1) data = abi.encodeCall(ISluiceEscrow.close, (g.id, g.deposit, sig));
        else if (kind == 2) data = abi.encodeCall(ISluiceEscrow.topUp, (g.id, 1));
        else if (kind == 3) data = abi.encodeCall(ISluiceEscrow.requestClose, (g.id));
        else if (kind == 4) data = abi.encodeCall(ISluiceEscrow.withdraw, (g.id));
        else data = abi.encodeCall(ISluiceEscrow.open, (g.payee, g.token, 1, g.salt, g.authorizedSigner));

        bool payeeOnly = kind <= 1;
        bool isOpen = kind == 5;
        bool allowed = isOpen ? false : (payeeOnly ? caller == g.payee : caller == g.payer);
        if (allowed && !g.finalized) return; // a legitimate call: the other actions cover it
        if (isOpen) caller = g.payer; // re-opening the same id needs the same payer
        vm.prank(caller);
        (bool ok, bytes memory reason) = address(escrow).call(data);
        if (isOpen && !g.finalized) {
            vm.assertFalse(ok, "misuse: duplicate open accepted");
            vm.assertEq(bytes4(reason), ISluiceEscrow.ChannelAlreadyExists.selector, "misuse: duplicate open");
        } else if (isOpen) {
            vm.assertFalse(ok, "misuse: finalized channel re-opened");
            vm.assertEq(bytes4(reason), ISluiceEscrow.ChannelAlreadyExists.selector, "misuse: re-open");
        } else if (g.finalized) {
            vm.assertFalse(ok, "misuse: finalized channel moved");
            vm.assertEq(bytes4(reason), ISluiceEscrow.ChannelFinalized.selector, "misuse: finalized");
        } else {
            vm.assertFalse(ok, "misuse: wrong party accepted");
            vm.assertEq(
                bytes4(reason),
                payeeOnly ? ISluiceEscrow.NotPayee.selector : ISluiceEscrow.NotPayer.selector,
                "misuse: wrong party"
            );
        }
        calls["misuse"]++;
    }

    // ================================================================ helpers

    /// @dev A channel index from a seed; `liveOnly` restricts to channels not finalized.
    function _pick(uint256 seed, bool liveOnly) internal view returns (bool found, uint256 index) {
        uint256 n = ghosts.length;
        if (n == 0) return (false, 0);
        for (uint256 k; k < n; ++k) {
            uint256 i = (seed % n + k) % n;
            if (!liveOnly || !ghosts[i].finalized) return (true, i);
        }
        return (false, 0);
    }

    /// @dev The channel's signer signs `cum`; the ghost remembers the highest amount ever signed.
    function _voucher(Ghost storage g, uint128 cum, bool compact) internal returns (bytes memory) {
        if (cum > g.highestSigned) g.highestSigned = cum;
        return compact ? _signCompact(escrow, g.signerKey, g.id, cum) : _sign(escrow, g.signerKey, g.id, cum);
    }
}
