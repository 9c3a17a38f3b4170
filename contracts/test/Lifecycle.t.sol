// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {EscrowTestBase} from "./utils/EscrowTestBase.sol";
import {Vm} from "./utils/Vm.sol";
import {ISluiceEscrow} from "../src/interfaces/ISluiceEscrow.sol";

/// @notice Unit and fuzz tests of open, topUp, requestClose, withdraw, settle and close.
contract LifecycleTest is EscrowTestBase {
    // ================================================================ open

    function test_open_StoresChannelAndPullsDeposit() public {
        bytes32 expectedId = escrow.computeChannelId(payer, payee, address(token), SALT, address(0));
        uint256 payerBefore = token.balanceOf(payer);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.ChannelOpened(expectedId, payer, payee, address(token), address(0), SALT, DEPOSIT);
        bytes32 id = _open(DEPOSIT);

        vm.assertEq(id, expectedId, "id");
        ISluiceEscrow.Channel memory c = escrow.getChannel(id);
        vm.assertEq(c.payer, payer, "payer");
        vm.assertEq(c.payee, payee, "payee");
        vm.assertEq(c.token, address(token), "token");
        vm.assertEq(c.authorizedSigner, address(0), "signer");
        _assertChannel(id, false, 0, DEPOSIT, 0, "opened");
        vm.assertEq(token.balanceOf(address(escrow)), DEPOSIT, "escrow balance");
        vm.assertEq(token.balanceOf(payer), payerBefore - DEPOSIT, "payer balance");
    }

    function test_open_StoresAuthorizedSigner() public {
        bytes32 id = _openWith(address(token), DEPOSIT, SALT, delegate);
        vm.assertEq(escrow.getChannel(id).authorizedSigner, delegate, "signer");
        vm.assertEq(id, escrow.computeChannelId(payer, payee, address(token), SALT, delegate), "id");
    }

    function test_open_RevertIf_PayeeIsZero() public {
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidPayee.selector, address(0)));
        vm.prank(payer);
        escrow.open(address(0), address(token), DEPOSIT, SALT, address(0));
    }

    function test_open_RevertIf_TokenHasNoCode() public {
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidToken.selector, stranger));
        vm.prank(payer);
        escrow.open(payee, stranger, DEPOSIT, SALT, address(0));
    }

    function test_open_RevertIf_TokenIsNotAnErc20() public {
        // Has code, but no balanceOf: refused before any state is kept.
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidToken.selector, address(escrow)));
        vm.prank(payer);
        escrow.open(payee, address(escrow), DEPOSIT, SALT, address(0));
    }

    function test_open_RevertIf_ZeroDeposit() public {
        vm.expectRevert(ISluiceEscrow.ZeroDeposit.selector);
        _open(0);
    }

    function test_open_RevertIf_ChannelAlreadyExists() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelAlreadyExists.selector, id));
        _open(DEPOSIT);
    }

    function test_open_RevertIf_ChannelWasClosed() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payee);
        escrow.close(id, 0, "");
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelAlreadyExists.selector, id));
        _open(DEPOSIT);
        _assertTombstone(id);
    }

    function test_open_RevertIf_ChannelWasWithdrawn() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE);
        vm.prank(payer);
        escrow.withdraw(id);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelAlreadyExists.selector, id));
        _open(DEPOSIT);
    }

    function test_open_RevertIf_AllowanceMissing() public {
        vm.prank(payer);
        token.approve(address(escrow), DEPOSIT - 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.TransferFailed.selector, address(token), payer, address(escrow), DEPOSIT
            )
        );
        _open(DEPOSIT);
    }

    function test_open_SameParamsFromAnotherPayerIsAnotherChannel() public {
        bytes32 a = _open(DEPOSIT);
        vm.prank(stranger);
        bytes32 b = escrow.open(payee, address(token), DEPOSIT, SALT, address(0));
        vm.assertTrue(a != b, "ids differ");
        vm.assertEq(escrow.getChannel(b).payer, stranger, "second payer");
    }

    function testFuzz_open_IdMatchesComputeAndFormula(address payee_, bytes32 salt, address signer, uint128 deposit)
        public
    {
        vm.assume(payee_ != address(0));
        deposit = uint128(_bound(deposit, 1, type(uint128).max));
        token.mint(payer, deposit);
        vm.prank(payer);
        bytes32 id = escrow.open(payee_, address(token), deposit, salt, signer);
        vm.assertEq(id, escrow.computeChannelId(payer, payee_, address(token), salt, signer), "compute");
        vm.assertEq(
            id,
            keccak256(abi.encode(payer, payee_, address(token), salt, signer, address(escrow), block.chainid)),
            "formula"
        );
        _assertChannel(id, false, 0, deposit, 0, "opened");
    }

    // ================================================================ topUp

    function test_topUp_RaisesDeposit() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.TopUp(id, payer, payee, 500, DEPOSIT + 500);
        vm.prank(payer);
        escrow.topUp(id, 500);
        _assertChannel(id, false, 0, DEPOSIT + 500, 0, "topped up");
        vm.assertEq(token.balanceOf(address(escrow)), DEPOSIT + 500, "escrow balance");
    }

    function test_topUp_CancelsCloseRequest() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE + 1);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.CloseRequestCancelled(id, payer, payee);
        vm.prank(payer);
        escrow.topUp(id, 1);
        _assertChannel(id, false, 0, DEPOSIT + 1, 0, "cancelled");

        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.CloseNotRequested.selector, id));
        vm.prank(payer);
        escrow.withdraw(id);
    }

    function test_topUp_RevertIf_NotPayer() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.NotPayer.selector, id, stranger, payer));
        vm.prank(stranger);
        escrow.topUp(id, 1);
    }

    function test_topUp_RevertIf_PayeeTopsUp() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.NotPayer.selector, id, payee, payer));
        vm.prank(payee);
        escrow.topUp(id, 1);
    }

    function test_topUp_RevertIf_ZeroDeposit() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(ISluiceEscrow.ZeroDeposit.selector);
        vm.prank(payer);
        escrow.topUp(id, 0);
    }

    function test_topUp_RevertIf_DepositOverflow() public {
        bytes32 id = _open(DEPOSIT);
        uint256 tooMuch = uint256(type(uint128).max) - DEPOSIT + 1;
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.DepositOverflow.selector, id, DEPOSIT, tooMuch));
        vm.prank(payer);
        escrow.topUp(id, tooMuch);
    }

    function test_topUp_RevertIf_HugeAmount() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.DepositOverflow.selector, id, DEPOSIT, type(uint256).max));
        vm.prank(payer);
        escrow.topUp(id, type(uint256).max);
    }

    function test_topUp_UpToMaxDeposit() public {
        bytes32 id = _open(DEPOSIT);
        uint256 rest = uint256(type(uint128).max) - DEPOSIT;
        token.mint(payer, rest);
        vm.prank(payer);
        escrow.topUp(id, rest);
        _assertChannel(id, false, 0, type(uint128).max, 0, "max");
    }

    function test_topUp_RevertIf_ChannelNotFound() public {
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelNotFound.selector, bytes32(uint256(1))));
        vm.prank(payer);
        escrow.topUp(bytes32(uint256(1)), 1);
    }

    function test_topUp_RevertIf_ChannelFinalized() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payee);
        escrow.close(id, 0, "");
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelFinalized.selector, id));
        vm.prank(payer);
        escrow.topUp(id, 1);
    }

    function test_topUp_RevertIf_AllowanceMissing() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        token.approve(address(escrow), 0);
        vm.expectRevert(
            abi.encodeWithSelector(ISluiceEscrow.TransferFailed.selector, address(token), payer, address(escrow), 7)
        );
        vm.prank(payer);
        escrow.topUp(id, 7);
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
    }

    function testFuzz_topUp_AddsExactly(uint128 deposit, uint256 extra) public {
        deposit = uint128(_bound(deposit, 1, type(uint128).max - 1));
        extra = _bound(extra, 1, uint256(type(uint128).max) - deposit);
        token.mint(payer, uint256(deposit) + extra);
        bytes32 id = _open(deposit);
        vm.prank(payer);
        escrow.topUp(id, extra);
        _assertChannel(id, false, 0, uint128(uint256(deposit) + extra), 0, "topped up");
        vm.assertEq(token.balanceOf(address(escrow)), uint256(deposit) + extra, "escrow balance");
    }

    // ================================================================ requestClose

    function test_requestClose_StartsGracePeriod() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.CloseRequested(id, payer, payee, START + GRACE);
        vm.prank(payer);
        escrow.requestClose(id);
        _assertChannel(id, false, START, DEPOSIT, 0, "requested");
    }

    function test_requestClose_SecondRequestKeepsFirstTime() public {
        bytes32 id = _open(DEPOSIT);
        // A literal, not block.timestamp: via-IR may re-read TIMESTAMP after the warp below.
        uint64 first = START;
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + 100);
        vm.recordLogs();
        vm.prank(payer);
        escrow.requestClose(id);
        vm.assertEq(vm.getRecordedLogs().length, 0, "no event on repeat");
        _assertChannel(id, false, first, DEPOSIT, 0, "kept");
    }

    function test_requestClose_RevertIf_NotPayer() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.NotPayer.selector, id, payee, payer));
        vm.prank(payee);
        escrow.requestClose(id);
    }

    function test_requestClose_RevertIf_ChannelNotFound() public {
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelNotFound.selector, SALT));
        vm.prank(payer);
        escrow.requestClose(SALT);
    }

    function test_requestClose_RevertIf_ChannelFinalized() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payee);
        escrow.close(id, 0, "");
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelFinalized.selector, id));
        vm.prank(payer);
        escrow.requestClose(id);
    }

    // ================================================================ withdraw

    function test_withdraw_RefundsDepositMinusSettled() public {
        bytes32 id = _open(DEPOSIT);
        _settle(id, 300);
        vm.prank(payer);
        escrow.requestClose(id);
        uint256 payerBefore = token.balanceOf(payer);
        vm.warp(START + GRACE);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.ChannelExpired(id, payer, payee);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.ChannelClosed(id, payer, payee, 300, DEPOSIT - 300);
        vm.prank(payer);
        escrow.withdraw(id);

        vm.assertEq(token.balanceOf(payer), payerBefore + DEPOSIT - 300, "refund");
        vm.assertEq(token.balanceOf(address(escrow)), 0, "escrow empty");
        _assertTombstone(id);
    }

    function test_withdraw_FullySettledRefundsNothing() public {
        bytes32 id = _open(DEPOSIT);
        _settle(id, DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE);
        vm.recordLogs();
        vm.prank(payer);
        escrow.withdraw(id);
        (uint256 transfers,) = _transfersTo(vm.getRecordedLogs(), address(token), address(escrow), payer);
        vm.assertEq(transfers, 0, "no zero transfer");
        _assertTombstone(id);
    }

    function test_withdraw_RevertIf_CloseNotRequested() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.CloseNotRequested.selector, id));
        vm.prank(payer);
        escrow.withdraw(id);
    }

    function test_withdraw_RevertIf_GracePeriodNotOver() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        uint256 readyAt = START + GRACE;
        vm.warp(readyAt - 1);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.CloseNotReady.selector, id, readyAt));
        vm.prank(payer);
        escrow.withdraw(id);
        vm.warp(readyAt);
        vm.prank(payer);
        escrow.withdraw(id);
        _assertTombstone(id);
    }

    function test_withdraw_RevertIf_NotPayer() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.NotPayer.selector, id, payee, payer));
        vm.prank(payee);
        escrow.withdraw(id);
    }

    function test_withdraw_RevertIf_ChannelNotFound() public {
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelNotFound.selector, SALT));
        vm.prank(payer);
        escrow.withdraw(SALT);
    }

    function test_withdraw_RevertIf_AlreadyWithdrawn() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE);
        vm.prank(payer);
        escrow.withdraw(id);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelFinalized.selector, id));
        vm.prank(payer);
        escrow.withdraw(id);
    }

    function test_withdraw_PayeeCanStillSettleAndCloseDuringGrace() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE - 1);
        _settle(id, 100);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 250);
        vm.prank(payee);
        escrow.close(id, 250, sig);
        vm.assertEq(token.balanceOf(payee), 250, "payee paid");
        vm.warp(START + GRACE);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelFinalized.selector, id));
        vm.prank(payer);
        escrow.withdraw(id);
    }

    function test_withdraw_HonoursCustomGracePeriod() public {
        ISluiceEscrow quick = _deployEscrow("", "", 60);
        vm.assertEq(uint256(quick.CLOSE_GRACE_PERIOD()), 60, "grace");
        vm.prank(payer);
        token.approve(address(quick), DEPOSIT);
        vm.prank(payer);
        bytes32 id = quick.open(payee, address(token), DEPOSIT, SALT, address(0));
        vm.prank(payer);
        quick.requestClose(id);
        vm.warp(START + 59);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.CloseNotReady.selector, id, START + 60));
        vm.prank(payer);
        quick.withdraw(id);
        vm.warp(START + 60);
        vm.prank(payer);
        quick.withdraw(id);
        vm.assertTrue(quick.getChannel(id).finalized, "finalized");
    }

    function testFuzz_withdraw_RefundIsExactlyUnsettled(uint128 deposit, uint128 settled, uint256 wait) public {
        deposit = uint128(_bound(deposit, 1, type(uint128).max));
        settled = uint128(_bound(settled, 0, deposit));
        wait = _bound(wait, GRACE, 365 days);
        token.mint(payer, deposit);
        bytes32 id = _open(deposit);
        if (settled != 0) _settle(id, settled);
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + wait);
        uint256 payerBefore = token.balanceOf(payer);
        uint256 payeeBefore = token.balanceOf(payee);
        vm.prank(payer);
        escrow.withdraw(id);
        vm.assertEq(token.balanceOf(payer) - payerBefore, deposit - settled, "refund");
        vm.assertEq(token.balanceOf(payee), payeeBefore, "payee unchanged");
        vm.assertEq(token.balanceOf(address(escrow)), 0, "escrow empty");
    }

    // ================================================================ settle

    function test_settle_PaysDeltaAndRecordsSettled() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 400);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.Settled(id, payer, payee, 400, 400, 400);
        vm.prank(payee);
        escrow.settle(id, 400, sig);

        sig = _sign(escrow, PAYER_KEY, id, 650);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.Settled(id, payer, payee, 650, 250, 650);
        vm.prank(payee);
        escrow.settle(id, 650, sig);

        vm.assertEq(token.balanceOf(payee), 650, "payee");
        vm.assertEq(token.balanceOf(address(escrow)), DEPOSIT - 650, "escrow");
        _assertChannel(id, false, 0, DEPOSIT, 650, "settled");
    }

    function test_settle_UpToFullDeposit() public {
        bytes32 id = _open(DEPOSIT);
        _settle(id, DEPOSIT);
        vm.assertEq(token.balanceOf(payee), DEPOSIT, "payee");
        _assertChannel(id, false, 0, DEPOSIT, DEPOSIT, "full");
    }

    function test_settle_DelegatedSignerOnly() public {
        bytes32 id = _openWith(address(token), DEPOSIT, SALT, delegate);
        bytes memory payerSig = _sign(escrow, PAYER_KEY, id, 10);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidSignature.selector, id, delegate, payer));
        vm.prank(payee);
        escrow.settle(id, 10, payerSig);

        bytes memory delegateSig = _sign(escrow, DELEGATE_KEY, id, 10);
        vm.prank(payee);
        escrow.settle(id, 10, delegateSig);
        vm.assertEq(token.balanceOf(payee), 10, "payee");
    }

    function test_settle_AcceptsCompactSignature() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _signCompact(escrow, PAYER_KEY, id, 77);
        vm.assertEq(sig.length, 64, "compact length");
        vm.prank(payee);
        escrow.settle(id, 77, sig);
        vm.assertEq(token.balanceOf(payee), 77, "payee");
    }

    function test_settle_DuringCloseRequest() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payer);
        escrow.requestClose(id);
        _settle(id, 5);
        _assertChannel(id, false, START, DEPOSIT, 5, "settled while closing");
    }

    function test_settle_RevertIf_NotPayee() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.NotPayee.selector, id, stranger, payee));
        vm.prank(stranger);
        escrow.settle(id, 10, sig);
    }

    function test_settle_RevertIf_PayerSettles() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.NotPayee.selector, id, payer, payee));
        vm.prank(payer);
        escrow.settle(id, 10, sig);
    }

    function test_settle_RevertIf_ChannelNotFound() public {
        bytes memory sig = _sign(escrow, PAYER_KEY, SALT, 10);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelNotFound.selector, SALT));
        vm.prank(payee);
        escrow.settle(SALT, 10, sig);
    }

    function test_settle_RevertIf_ChannelFinalized() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        vm.prank(payee);
        escrow.close(id, 0, "");
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelFinalized.selector, id));
        vm.prank(payee);
        escrow.settle(id, 10, sig);
    }

    function test_settle_RevertIf_AmountExceedsDeposit() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, DEPOSIT + 1);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.AmountExceedsDeposit.selector, id, DEPOSIT + 1, DEPOSIT));
        vm.prank(payee);
        escrow.settle(id, DEPOSIT + 1, sig);
    }

    function test_settle_RevertIf_AmountNotIncreasing() public {
        bytes32 id = _open(DEPOSIT);
        _settle(id, 100);
        bytes memory same = _sign(escrow, PAYER_KEY, id, 100);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.AmountNotIncreasing.selector, id, 100, 100));
        vm.prank(payee);
        escrow.settle(id, 100, same);
        bytes memory lower = _sign(escrow, PAYER_KEY, id, 99);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.AmountNotIncreasing.selector, id, 99, 100));
        vm.prank(payee);
        escrow.settle(id, 99, lower);
    }

    function test_settle_RevertIf_ZeroAmount() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 0);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.AmountNotIncreasing.selector, id, 0, 0));
        vm.prank(payee);
        escrow.settle(id, 0, sig);
    }

    function test_settle_RevertIf_WrongSigner() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, STRANGER_KEY, id, 10);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidSignature.selector, id, payer, stranger));
        vm.prank(payee);
        escrow.settle(id, 10, sig);
    }

    function test_settle_RevertIf_SignatureForOtherAmount() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        address recovered = _recoverUnchecked(escrow.getVoucherDigest(id, 11), sig);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidSignature.selector, id, payer, recovered));
        vm.prank(payee);
        escrow.settle(id, 11, sig);
    }

    function test_settle_RevertIf_BadSignatureLeavesStateUnchanged() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory bad = _sign(escrow, STRANGER_KEY, id, 10);
        vm.prank(payee);
        try escrow.settle(id, 10, bad) {
            revert("settle with a bad signature succeeded");
        } catch {}
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
        vm.assertEq(token.balanceOf(address(escrow)), DEPOSIT, "escrow");
        vm.assertEq(token.balanceOf(payee), 0, "payee");
    }

    function testFuzz_settle_PaysExactlyTheDelta(uint128 deposit, uint128 first, uint128 second) public {
        deposit = uint128(_bound(deposit, 2, type(uint128).max));
        first = uint128(_bound(first, 1, deposit - 1));
        second = uint128(_bound(second, first + 1, deposit));
        token.mint(payer, deposit);
        bytes32 id = _open(deposit);
        _settle(id, first);
        vm.assertEq(token.balanceOf(payee), first, "first");
        _settle(id, second);
        vm.assertEq(token.balanceOf(payee), second, "second");
        vm.assertEq(token.balanceOf(address(escrow)), deposit - second, "escrow");
        _assertChannel(id, false, 0, deposit, second, "settled");
    }

    // ================================================================ close

    function test_close_PaysPayeeAndRefundsPayer() public {
        bytes32 id = _open(DEPOSIT);
        _settle(id, 100);
        uint256 payerBefore = token.balanceOf(payer);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 600);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit ISluiceEscrow.ChannelClosed(id, payer, payee, 600, DEPOSIT - 600);
        vm.prank(payee);
        escrow.close(id, 600, sig);

        vm.assertEq(token.balanceOf(payee), 600, "payee total");
        vm.assertEq(token.balanceOf(payer), payerBefore + DEPOSIT - 600, "refund");
        vm.assertEq(token.balanceOf(address(escrow)), 0, "escrow empty");
        _assertTombstone(id);
    }

    function test_close_AtOrBelowSettledNeedsNoSignature() public {
        bytes32 id = _open(DEPOSIT);
        _settle(id, 100);
        uint256 payerBefore = token.balanceOf(payer);
        vm.recordLogs();
        vm.prank(payee);
        escrow.close(id, 50, hex"deadbeef");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        (uint256 toPayee,) = _transfersTo(logs, address(token), address(escrow), payee);
        vm.assertEq(toPayee, 0, "nothing more to payee");
        vm.assertEq(token.balanceOf(payee), 100, "payee keeps settled");
        vm.assertEq(token.balanceOf(payer), payerBefore + DEPOSIT - 100, "refund");
        _assertTombstone(id);
    }

    function test_close_FullDepositRefundsNothing() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, DEPOSIT);
        vm.recordLogs();
        vm.prank(payee);
        escrow.close(id, DEPOSIT, sig);
        (uint256 toPayer,) = _transfersTo(vm.getRecordedLogs(), address(token), address(escrow), payer);
        vm.assertEq(toPayer, 0, "no zero refund transfer");
        vm.assertEq(token.balanceOf(payee), DEPOSIT, "payee");
    }

    function test_close_WithDelegatedSigner() public {
        bytes32 id = _openWith(address(token), DEPOSIT, SALT, delegate);
        bytes memory sig = _sign(escrow, DELEGATE_KEY, id, 10);
        vm.prank(payee);
        escrow.close(id, 10, sig);
        vm.assertEq(token.balanceOf(payee), 10, "payee");
    }

    function test_close_RevertIf_NotPayee() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.NotPayee.selector, id, payer, payee));
        vm.prank(payer);
        escrow.close(id, 0, "");
    }

    function test_close_RevertIf_ChannelNotFound() public {
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelNotFound.selector, SALT));
        vm.prank(payee);
        escrow.close(SALT, 0, "");
    }

    function test_close_RevertIf_ChannelFinalized() public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payee);
        escrow.close(id, 0, "");
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.ChannelFinalized.selector, id));
        vm.prank(payee);
        escrow.close(id, 0, "");
    }

    function test_close_RevertIf_AmountExceedsDeposit() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, DEPOSIT + 1);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.AmountExceedsDeposit.selector, id, DEPOSIT + 1, DEPOSIT));
        vm.prank(payee);
        escrow.close(id, DEPOSIT + 1, sig);
    }

    function test_close_RevertIf_InvalidSignature() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYEE_KEY, id, 10);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidSignature.selector, id, payer, payee));
        vm.prank(payee);
        escrow.close(id, 10, sig);
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
    }

    function test_close_RevertIf_MalformedSignature() public {
        bytes32 id = _open(DEPOSIT);
        vm.expectRevert(
            abi.encodeWithSelector(ISluiceEscrow.MalformedSignature.selector, id, ISluiceEscrow.SignatureFault.Length)
        );
        vm.prank(payee);
        escrow.close(id, 10, hex"deadbeef");
    }

    function testFuzz_close_SplitsDepositExactly(uint128 deposit, uint128 settled, uint128 finalAmount) public {
        deposit = uint128(_bound(deposit, 1, type(uint128).max));
        settled = uint128(_bound(settled, 0, deposit));
        finalAmount = uint128(_bound(finalAmount, 0, deposit));
        token.mint(payer, deposit);
        bytes32 id = _open(deposit);
        if (settled != 0) _settle(id, settled);
        uint256 payerBefore = token.balanceOf(payer);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, finalAmount);
        vm.prank(payee);
        escrow.close(id, finalAmount, sig);
        uint128 paid = finalAmount > settled ? finalAmount : settled;
        vm.assertEq(token.balanceOf(payee), paid, "payee");
        vm.assertEq(token.balanceOf(payer) - payerBefore, deposit - paid, "payer");
        vm.assertEq(token.balanceOf(address(escrow)), 0, "escrow");
        _assertTombstone(id);
    }

    // ================================================================ helpers

    function _recoverUnchecked(bytes32 digest, bytes memory sig) private pure returns (address) {
        (bytes32 r, bytes32 s, uint8 v) = _split(sig);
        return ecrecover(digest, v, r, s);
    }
}
