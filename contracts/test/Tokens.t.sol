// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {EscrowTestBase} from "./utils/EscrowTestBase.sol";
import {ISluiceEscrow} from "../src/interfaces/ISluiceEscrow.sol";
import {NoBoolToken} from "./tokens/NoBoolToken.sol";
import {FeeOnTransferToken} from "./tokens/FeeOnTransferToken.sol";
import {ReentrantToken} from "./tokens/ReentrantToken.sol";
import {FalseReturningToken} from "./tokens/FalseReturningToken.sol";

/// @notice Awkward and hostile tokens: no return value, transfer fees, re-entry, `false` returns.
contract TokensTest is EscrowTestBase {
    NoBoolToken internal noBool;
    FeeOnTransferToken internal feeToken;
    ReentrantToken internal reentrant;
    FalseReturningToken internal falseToken;

    function setUp() public override {
        super.setUp();
        noBool = new NoBoolToken();
        feeToken = new FeeOnTransferToken(100); // 1 %
        reentrant = new ReentrantToken();
        falseToken = new FalseReturningToken();
        _fund(address(noBool), payer, 1e30);
        _fund(address(feeToken), payer, 1e30);
        _fund(address(reentrant), payer, 1e30);
        _fund(address(falseToken), payer, 1e30);
    }

    // ================================================================ no-bool token

    function test_noBoolToken_FullLifecycle() public {
        bytes32 id = _openWith(address(noBool), DEPOSIT, SALT, address(0));
        vm.assertEq(noBool.balanceOf(address(escrow)), DEPOSIT, "pulled");
        vm.prank(payer);
        escrow.topUp(id, 100);
        _settle(id, 300);
        vm.assertEq(noBool.balanceOf(payee), 300, "settled");

        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(noBool), SALT, address(0), 400, PAYER_KEY);
        vm.prank(payee);
        escrow.settleBatch(items);
        vm.assertEq(noBool.balanceOf(payee), 400, "batch settled");

        uint256 payerBefore = noBool.balanceOf(payer);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 450);
        vm.prank(payee);
        escrow.close(id, 450, sig);
        vm.assertEq(noBool.balanceOf(payee), 450, "closed");
        vm.assertEq(noBool.balanceOf(payer) - payerBefore, DEPOSIT + 100 - 450, "refund");
        vm.assertEq(noBool.balanceOf(address(escrow)), 0, "escrow empty");
    }

    function test_noBoolToken_RevertIf_PullFails() public {
        vm.prank(payer);
        noBool.approve(address(escrow), 0);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.TransferFailed.selector, address(noBool), payer, address(escrow), DEPOSIT
            )
        );
        _openWith(address(noBool), DEPOSIT, SALT, address(0));
    }

    // ================================================================ fee-on-transfer token

    function test_open_RevertIf_FeeOnTransferToken() public {
        uint256 received = DEPOSIT - DEPOSIT / 100;
        vm.expectRevert(
            abi.encodeWithSelector(ISluiceEscrow.FeeOnTransferToken.selector, address(feeToken), DEPOSIT, received)
        );
        _openWith(address(feeToken), DEPOSIT, SALT, address(0));
    }

    function test_topUp_RevertIf_FeeOnTransferToken() public {
        feeToken.setFeeBps(0);
        bytes32 id = _openWith(address(feeToken), DEPOSIT, SALT, address(0));
        feeToken.setFeeBps(100);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.FeeOnTransferToken.selector, address(feeToken), 1000, 990));
        vm.prank(payer);
        escrow.topUp(id, 1000);
        _assertChannel(id, false, 0, DEPOSIT, 0, "deposit unchanged");
        vm.assertEq(feeToken.balanceOf(address(escrow)), DEPOSIT, "escrow unchanged");
    }

    function test_feeToken_FeeTurnedOnLaterIsBorneByRecipients() public {
        // A token that starts charging fees after open only shortchanges the recipient of each
        // payout; the escrow still pays exactly the owed amounts out of its own balance.
        feeToken.setFeeBps(0);
        bytes32 id = _openWith(address(feeToken), DEPOSIT, SALT, address(0));
        feeToken.setFeeBps(100);
        _settle(id, 1000);
        vm.assertEq(feeToken.balanceOf(address(escrow)), DEPOSIT - 1000, "escrow debited the owed amount");
        vm.assertEq(feeToken.balanceOf(payee), 990, "payee bears the token's fee");
    }

    // ================================================================ re-entrant token

    function test_open_ReentryIsRefused() public {
        reentrant.arm(
            address(escrow),
            abi.encodeCall(ISluiceEscrow.open, (payee, address(reentrant), 1, bytes32(uint256(77)), address(0)))
        );
        bytes32 id = _openWith(address(reentrant), DEPOSIT, SALT, address(0));
        _assertReentryRefused(1);
        _assertChannel(id, false, 0, DEPOSIT, 0, "outer open");
        vm.assertEq(reentrant.balanceOf(address(escrow)), DEPOSIT, "escrow");
    }

    function test_settle_ReentryIsRefused() public {
        bytes32 id = _openWith(address(reentrant), DEPOSIT, SALT, address(0));
        // The token tries to settle again (as itself, which is not the payee, and under the lock).
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 500);
        reentrant.arm(address(escrow), abi.encodeCall(ISluiceEscrow.settle, (id, 500, sig)));
        bytes memory first = _sign(escrow, PAYER_KEY, id, 100);
        vm.prank(payee);
        escrow.settle(id, 100, first);
        _assertReentryRefused(1);
        vm.assertEq(reentrant.balanceOf(payee), 100, "paid once");
        _assertChannel(id, false, 0, DEPOSIT, 100, "settled once");
    }

    function test_withdraw_ReentryIsRefused() public {
        bytes32 id = _openWith(address(reentrant), DEPOSIT, SALT, address(0));
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE);
        reentrant.arm(address(escrow), abi.encodeCall(ISluiceEscrow.withdraw, (id)));
        uint256 payerBefore = reentrant.balanceOf(payer);
        vm.prank(payer);
        escrow.withdraw(id);
        _assertReentryRefused(1);
        vm.assertEq(reentrant.balanceOf(payer) - payerBefore, DEPOSIT, "refunded once");
        vm.assertEq(reentrant.balanceOf(address(escrow)), 0, "escrow empty");
    }

    function test_close_ReentryIsRefused() public {
        bytes32 id = _openWith(address(reentrant), DEPOSIT, SALT, address(0));
        reentrant.arm(address(escrow), abi.encodeCall(ISluiceEscrow.close, (id, 0, "")));
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 100);
        vm.prank(payee);
        escrow.close(id, 100, sig);
        _assertReentryRefused(2); // payee payout and payer refund each try once
        vm.assertEq(reentrant.balanceOf(payee), 100, "payee");
        vm.assertEq(reentrant.balanceOf(address(escrow)), 0, "escrow empty");
        _assertTombstone(id);
    }

    function test_settleBatch_ReentryIsRefused() public {
        _openWith(address(reentrant), DEPOSIT, SALT, address(0));
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(reentrant), SALT, address(0), 100, PAYER_KEY);
        ISluiceEscrow.SettleItem[] memory again = new ISluiceEscrow.SettleItem[](1);
        again[0] = _item(address(reentrant), SALT, address(0), 200, PAYER_KEY);
        reentrant.arm(address(escrow), abi.encodeCall(ISluiceEscrow.settleBatch, (again)));
        vm.prank(payee);
        escrow.settleBatch(items);
        _assertReentryRefused(1);
        vm.assertEq(reentrant.balanceOf(payee), 100, "paid once");
    }

    function test_topUp_ReentryIsRefused() public {
        bytes32 id = _openWith(address(reentrant), DEPOSIT, SALT, address(0));
        reentrant.arm(address(escrow), abi.encodeCall(ISluiceEscrow.requestClose, (id)));
        vm.prank(payer);
        escrow.topUp(id, 5);
        _assertReentryRefused(1);
        _assertChannel(id, false, 0, DEPOSIT + 5, 0, "topped up, no close request");
    }

    // ================================================================ token returning false

    function test_settle_RevertIf_TransferReturnsFalse() public {
        bytes32 id = _openWith(address(falseToken), DEPOSIT, SALT, address(0));
        falseToken.setFailing(true);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.TransferFailed.selector, address(falseToken), address(escrow), payee, 10
            )
        );
        vm.prank(payee);
        escrow.settle(id, 10, sig);
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
    }

    function test_open_RevertIf_TransferFromReturnsFalse() public {
        falseToken.setFailing(true);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.TransferFailed.selector, address(falseToken), payer, address(escrow), DEPOSIT
            )
        );
        _openWith(address(falseToken), DEPOSIT, SALT, address(0));
    }

    function test_settleBatch_RevertIf_TransferReturnsFalse() public {
        _openWith(address(falseToken), DEPOSIT, SALT, address(0));
        falseToken.setFailing(true);
        ISluiceEscrow.SettleItem[] memory items = new ISluiceEscrow.SettleItem[](1);
        items[0] = _item(address(falseToken), SALT, address(0), 10, PAYER_KEY);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.TransferFailed.selector, address(falseToken), address(escrow), payee, 10
            )
        );
        vm.prank(payee);
        escrow.settleBatch(items);
        bytes32 id = escrow.computeChannelId(payer, payee, address(falseToken), SALT, address(0));
        _assertChannel(id, false, 0, DEPOSIT, 0, "whole batch reverted");
    }

    function test_close_RevertIf_RefundReturnsFalse() public {
        bytes32 id = _openWith(address(falseToken), DEPOSIT, SALT, address(0));
        falseToken.setFailing(true);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.TransferFailed.selector, address(falseToken), address(escrow), payer, DEPOSIT
            )
        );
        vm.prank(payee);
        escrow.close(id, 0, "");
        _assertChannel(id, false, 0, DEPOSIT, 0, "not finalized");
    }

    function test_withdraw_RevertIf_RefundReturnsFalse() public {
        bytes32 id = _openWith(address(falseToken), DEPOSIT, SALT, address(0));
        vm.prank(payer);
        escrow.requestClose(id);
        vm.warp(START + GRACE);
        falseToken.setFailing(true);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.TransferFailed.selector, address(falseToken), address(escrow), payer, DEPOSIT
            )
        );
        vm.prank(payer);
        escrow.withdraw(id);
        _assertChannel(id, false, START, DEPOSIT, 0, "still withdrawable later");
        falseToken.setFailing(false);
        vm.prank(payer);
        escrow.withdraw(id);
        _assertTombstone(id);
    }

    // ================================================================ helpers

    function _assertReentryRefused(uint256 attempts) private view {
        vm.assertEq(reentrant.attempts(), attempts, "re-entry attempted");
        vm.assertEq(reentrant.successes(), 0, "no re-entry succeeded");
        vm.assertEq(reentrant.lastRevertData(), abi.encodeWithSelector(ISluiceEscrow.Reentrancy.selector), "Reentrancy");
    }
}
