// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {EscrowTestBase} from "./utils/EscrowTestBase.sol";
import {Vm} from "./utils/Vm.sol";
import {ISluiceEscrow} from "../src/interfaces/ISluiceEscrow.sol";
import {TestToken} from "./tokens/TestToken.sol";

/// @notice `settleBatch`: per-item skipping, payee-only, aggregated transfers.
contract SettleBatchTest is EscrowTestBase {
    bytes32 internal constant SETTLED_TOPIC = keccak256("Settled(bytes32,address,address,uint256,uint256,uint256)");
    bytes32 internal constant SKIPPED_TOPIC = keccak256("SettleSkipped(bytes32,uint128,uint8)");

    TestToken internal other;

    function setUp() public override {
        super.setUp();
        other = new TestToken("Other USD", "OUSD", 18);
        _fund(address(other), payer, 1e30);
    }

    function test_settleBatch_SettlesAllWithOneTransfer() public {
        uint256 n = 5;
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](n);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            bytes32 salt = bytes32(i + 1);
            _openWith(address(token), DEPOSIT, salt, address(0));
            uint128 amount = uint128(100 * (i + 1));
            items[i] = _item(address(token), salt, address(0), amount, PAYER_KEY);
            total += amount;
        }
        vm.recordLogs();
        vm.prank(payee);
        uint256 settledCount = escrow.settleBatch(items);
        Vm.Log[] memory logs = vm.getRecordedLogs();

        vm.assertEq(settledCount, n, "count");
        (uint256 transfers, uint256 sum) = _transfersTo(logs, address(token), address(escrow), payee);
        vm.assertEq(transfers, 1, "one transfer");
        vm.assertEq(sum, total, "sum");
        vm.assertEq(token.balanceOf(payee), total, "payee balance");
        vm.assertEq(_countLogs(logs, address(escrow), SETTLED_TOPIC), n, "Settled per channel");
        vm.assertEq(_countLogs(logs, address(escrow), SKIPPED_TOPIC), 0, "no skips");
        for (uint256 i; i < n; ++i) {
            bytes32 id = escrow.computeChannelId(payer, payee, address(token), bytes32(i + 1), address(0));
            _assertChannel(id, false, 0, DEPOSIT, uint128(100 * (i + 1)), "settled");
        }
    }

    function test_settleBatch_EmitsSettledLikeSettle() public {
        _openWith(address(token), DEPOSIT, SALT, address(0));
        bytes32 id = escrow.computeChannelId(payer, payee, address(token), SALT, address(0));
        _settle(id, 100);
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(token), SALT, address(0), 350, PAYER_KEY);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.Settled(id, payer, payee, 350, 250, 350);
        vm.prank(payee);
        escrow.settleBatch(items);
    }

    function test_settleBatch_OneTransferPerToken() public {
        // Tokens interleaved A, B, A, B, A: still exactly one transfer per token.
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](5);
        uint256 totalA;
        uint256 totalB;
        for (uint256 i; i < 5; ++i) {
            address t = i % 2 == 0 ? address(token) : address(other);
            bytes32 salt = bytes32(i + 1);
            _openWith(t, DEPOSIT, salt, address(0));
            uint128 amount = uint128(10 + i);
            items[i] = _item(t, salt, address(0), amount, PAYER_KEY);
            if (t == address(token)) totalA += amount;
            else totalB += amount;
        }
        vm.recordLogs();
        vm.prank(payee);
        escrow.settleBatch(items);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        (uint256 countA, uint256 sumA) = _transfersTo(logs, address(token), address(escrow), payee);
        (uint256 countB, uint256 sumB) = _transfersTo(logs, address(other), address(escrow), payee);
        vm.assertEq(countA, 1, "one transfer of A");
        vm.assertEq(countB, 1, "one transfer of B");
        vm.assertEq(sumA, totalA, "sum A");
        vm.assertEq(sumB, totalB, "sum B");
        vm.assertEq(token.balanceOf(address(escrow)), 3 * DEPOSIT - totalA, "escrow A");
        vm.assertEq(other.balanceOf(address(escrow)), 2 * DEPOSIT - totalB, "escrow B");
    }

    function test_settleBatch_SkipsBadItemsAndSettlesTheRest() public {
        // 0: fine. 1: unknown channel. 2: finalized. 3: above deposit. 4: not increasing.
        // 5: malformed signature. 6: wrong signer. 7: channel of another payee. 8: fine (delegated).
        for (uint256 i; i < 9; ++i) {
            if (i == 1 || i == 7) continue;
            _openWith(address(token), DEPOSIT, bytes32(i + 1), i == 8 ? delegate : address(0));
        }
        vm.prank(payer);
        escrow.open(stranger, address(token), DEPOSIT, bytes32(uint256(8)), address(0));
        bytes32 finalizedId = escrow.computeChannelId(payer, payee, address(token), bytes32(uint256(3)), address(0));
        vm.prank(payee);
        escrow.close(finalizedId, 0, "");
        _settle(escrow.computeChannelId(payer, payee, address(token), bytes32(uint256(5)), address(0)), 500);

        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](9);
        items[0] = _item(address(token), bytes32(uint256(1)), address(0), 10, PAYER_KEY);
        items[1] = _item(address(token), bytes32(uint256(2)), address(0), 10, PAYER_KEY);
        items[2] = _item(address(token), bytes32(uint256(3)), address(0), 10, PAYER_KEY);
        items[3] = _item(address(token), bytes32(uint256(4)), address(0), DEPOSIT + 1, PAYER_KEY);
        items[4] = _item(address(token), bytes32(uint256(5)), address(0), 500, PAYER_KEY);
        items[5] = _item(address(token), bytes32(uint256(6)), address(0), 10, PAYER_KEY);
        items[5].r = bytes32(0);
        items[6] = _item(address(token), bytes32(uint256(7)), address(0), 10, STRANGER_KEY);
        items[7] = _item(address(token), bytes32(uint256(8)), address(0), 10, PAYER_KEY); // payee is stranger
        items[8] = _item(address(token), bytes32(uint256(9)), delegate, 30, DELEGATE_KEY);

        ISluiceEscrow.SkipReason[9] memory expected = [
            ISluiceEscrow.SkipReason.ChannelNotFound, // unused slot for item 0
            ISluiceEscrow.SkipReason.ChannelNotFound,
            ISluiceEscrow.SkipReason.ChannelFinalized,
            ISluiceEscrow.SkipReason.AmountExceedsDeposit,
            ISluiceEscrow.SkipReason.AmountNotIncreasing,
            ISluiceEscrow.SkipReason.MalformedSignature,
            ISluiceEscrow.SkipReason.InvalidSignature,
            ISluiceEscrow.SkipReason.ChannelNotFound,
            ISluiceEscrow.SkipReason.ChannelNotFound // unused slot for item 8
        ];
        for (uint256 i = 1; i < 8; ++i) {
            bytes32 id = escrow.computeChannelId(payer, payee, address(token), bytes32(i + 1), address(0));
            vm.expectEmit(true, false, false, true, address(escrow));
            emit ISluiceEscrow.SettleSkipped(id, items[i].cumulativeAmount, expected[i]);
        }
        uint256 payeeBefore = token.balanceOf(payee);
        vm.prank(payee);
        uint256 settledCount = escrow.settleBatch(items);

        vm.assertEq(settledCount, 2, "two settled");
        vm.assertEq(token.balanceOf(payee) - payeeBefore, 40, "paid items 0 and 8");
        bytes32 stillFive = escrow.computeChannelId(payer, payee, address(token), bytes32(uint256(5)), address(0));
        _assertChannel(stillFive, false, 0, DEPOSIT, 500, "unchanged by skip");
        bytes32 strangers = escrow.computeChannelId(payer, stranger, address(token), bytes32(uint256(8)), address(0));
        _assertChannel(strangers, false, 0, DEPOSIT, 0, "other payee's channel untouched");
    }

    function test_settleBatch_OnlyThePayeesOwnChannels() public {
        _openWith(address(token), DEPOSIT, SALT, address(0));
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        // The payer (or anyone) submitting the payee's vouchers settles nothing: the id derived
        // with the caller as payee does not exist.
        vm.recordLogs();
        vm.prank(stranger);
        uint256 settledCount = escrow.settleBatch(items);
        vm.assertEq(settledCount, 0, "nothing settled");
        vm.assertEq(token.balanceOf(stranger), 1e30, "stranger unchanged");
        vm.assertEq(_countLogs(vm.getRecordedLogs(), address(escrow), SKIPPED_TOPIC), 1, "skipped");
        bytes32 id = escrow.computeChannelId(payer, payee, address(token), SALT, address(0));
        _assertChannel(id, false, 0, DEPOSIT, 0, "untouched");
    }

    function test_settleBatch_SameChannelTwice() public {
        _openWith(address(token), DEPOSIT, SALT, address(0));
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](3);
        items[0] = _item(address(token), SALT, address(0), 100, PAYER_KEY);
        items[1] = _item(address(token), SALT, address(0), 300, PAYER_KEY);
        items[2] = _item(address(token), SALT, address(0), 300, PAYER_KEY);
        vm.prank(payee);
        uint256 settledCount = escrow.settleBatch(items);
        vm.assertEq(settledCount, 2, "second raises, third is stale");
        vm.assertEq(token.balanceOf(payee), 300, "paid the highest once");
    }

    function test_settleBatch_EmptyDoesNothing() public {
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](0);
        vm.recordLogs();
        vm.prank(payee);
        vm.assertEq(escrow.settleBatch(items), 0, "count");
        vm.assertEq(vm.getRecordedLogs().length, 0, "no logs");
    }

    function test_settleBatch_AllSkippedTransfersNothing() public {
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](2);
        items[0] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        items[1] = _item(address(token), SALT, address(0), 20, PAYER_KEY);
        vm.recordLogs();
        vm.prank(payee);
        vm.assertEq(escrow.settleBatch(items), 0, "count");
        (uint256 transfers,) = _transfersTo(vm.getRecordedLogs(), address(token), address(escrow), payee);
        vm.assertEq(transfers, 0, "no transfer");
    }

    function test_settleBatch_SkipsHighSAndZeroS() public {
        _openWith(address(token), DEPOSIT, SALT, address(0));
        bytes32 id = escrow.computeChannelId(payer, payee, address(token), SALT, address(0));
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](2);
        items[0] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        items[0].yParityAndS = bytes32((SECP256K1_N >> 1) + 1);
        items[1] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        items[1].yParityAndS = bytes32(uint256(1) << 255); // s = 0, parity 1
        vm.expectEmit(true, false, false, true, address(escrow));
        emit ISluiceEscrow.SettleSkipped(id, 10, ISluiceEscrow.SkipReason.MalformedSignature);
        vm.expectEmit(true, false, false, true, address(escrow));
        emit ISluiceEscrow.SettleSkipped(id, 10, ISluiceEscrow.SkipReason.MalformedSignature);
        vm.prank(payee);
        vm.assertEq(escrow.settleBatch(items), 0, "count");
    }

    function test_settleBatch_SkipsRNotBelowGroupOrder() public {
        _openWith(address(token), DEPOSIT, SALT, address(0));
        bytes32 id = escrow.computeChannelId(payer, payee, address(token), SALT, address(0));
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        items[0].r = bytes32(SECP256K1_N);
        vm.expectEmit(true, false, false, true, address(escrow));
        emit ISluiceEscrow.SettleSkipped(id, 10, ISluiceEscrow.SkipReason.MalformedSignature);
        vm.prank(payee);
        vm.assertEq(escrow.settleBatch(items), 0, "count");
    }

    function test_settleBatch_MalleatedTwinIsNotAccepted() public {
        _openWith(address(token), DEPOSIT, SALT, address(0));
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        uint256 s = uint256(items[0].yParityAndS) & (type(uint256).max >> 1);
        uint256 parity = uint256(items[0].yParityAndS) >> 255;
        // (n - s, flipped parity) is the same signature malleated; in compact form its top bit
        // collides with the parity bit, so it either reads as high-s or recovers someone else.
        items[0].yParityAndS = bytes32((SECP256K1_N - s) | ((parity ^ 1) << 255));
        vm.prank(payee);
        vm.assertEq(escrow.settleBatch(items), 0, "not settled");
        vm.assertEq(token.balanceOf(payee), 0, "nothing paid");
    }

    function test_settleBatch_RevertIf_DirtyAddressBits() public {
        _openWith(address(token), DEPOSIT, SALT, address(0));
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        bytes memory data = abi.encodeCall(ISluiceEscrow.settleBatch, (items));
        // Calldata: selector, array offset, length, then the item; set a bit above the payer's 160.
        data[4 + 32 + 32 + 11] = 0x01;
        vm.prank(payee);
        (bool ok,) = address(escrow).call(data);
        vm.assertFalse(ok, "non-canonical ABI encoding refused");
        bytes32 id = escrow.computeChannelId(payer, payee, address(token), SALT, address(0));
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
    }

    function test_settleBatch_DuringCloseRequest() public {
        bytes32 id = _openWith(address(token), DEPOSIT, SALT, address(0));
        vm.prank(payer);
        escrow.requestClose(id);
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(token), SALT, address(0), 10, PAYER_KEY);
        vm.prank(payee);
        vm.assertEq(escrow.settleBatch(items), 1, "settled in grace period");
    }

    /// A batch leaves every channel and balance exactly as the same vouchers settled one by one.
    function testFuzz_settleBatch_MatchesSequentialSettles(uint256 seed) public {
        uint256 n = _bound(seed % 7, 1, 6);
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](n);
        uint128[] memory expected = new uint128[](n);
        uint256 expectedPaid;
        for (uint256 i; i < n; ++i) {
            bytes32 salt = bytes32(i + 1);
            uint128 deposit = uint128(_bound(uint256(keccak256(abi.encode(seed, i, "d"))), 1, 1e24));
            _openWith(address(token), deposit, salt, address(0));
            bytes32 id = escrow.computeChannelId(payer, payee, address(token), salt, address(0));
            uint128 prior = uint128(_bound(uint256(keccak256(abi.encode(seed, i, "p"))), 0, deposit));
            if (prior != 0) _settle(id, prior);
            // Anything from 0 to deposit + 1: some will be stale or too high and must be skipped.
            uint128 amount = uint128(_bound(uint256(keccak256(abi.encode(seed, i, "a"))), 0, uint256(deposit) + 1));
            items[i] = _item(address(token), salt, address(0), amount, PAYER_KEY);
            bool ok = amount > prior && amount <= deposit;
            expected[i] = ok ? amount : prior;
            if (ok) expectedPaid += amount - prior;
        }
        uint256 payeeBefore = token.balanceOf(payee);
        uint256 escrowBefore = token.balanceOf(address(escrow));
        vm.prank(payee);
        escrow.settleBatch(items);
        vm.assertEq(token.balanceOf(payee) - payeeBefore, expectedPaid, "payee paid");
        vm.assertEq(escrowBefore - token.balanceOf(address(escrow)), expectedPaid, "escrow paid out");
        for (uint256 i; i < n; ++i) {
            bytes32 id = escrow.computeChannelId(payer, payee, address(token), bytes32(i + 1), address(0));
            vm.assertEq(uint256(escrow.getChannel(id).settled), uint256(expected[i]), "settled");
        }
    }
}
