// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestUtils} from "../utils/EscrowTestBase.sol";
import {EscrowHandler} from "./EscrowHandler.sol";
import {ISluiceEscrow} from "../../src/interfaces/ISluiceEscrow.sol";
import {TestToken} from "../tokens/TestToken.sol";

/// @notice Stateful fuzzing: random sequences of handler actions, with the money invariants of
///         INVARIANTS.md checked after every call.
contract EscrowInvariantsTest is TestUtils {
    /// @notice Foundry's target-selector shape (read by forge, as in forge-std's StdInvariant).
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    ISluiceEscrow internal escrow;
    EscrowHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        escrow = _deployEscrow("", "", 0);
        handler = new EscrowHandler(escrow);
    }

    /// @notice Only the handler is fuzzed.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    /// @notice The handler's actions (its views are left out).
    function targetSelectors() public view returns (FuzzSelector[] memory selectors) {
        bytes4[] memory actions = new bytes4[](9);
        actions[0] = EscrowHandler.open.selector;
        actions[1] = EscrowHandler.topUp.selector;
        actions[2] = EscrowHandler.settle.selector;
        actions[3] = EscrowHandler.settleBatch.selector;
        actions[4] = EscrowHandler.close.selector;
        actions[5] = EscrowHandler.requestClose.selector;
        actions[6] = EscrowHandler.withdraw.selector;
        actions[7] = EscrowHandler.warp.selector;
        actions[8] = EscrowHandler.misuse.selector;
        selectors = new FuzzSelector[](1);
        selectors[0] = FuzzSelector({addr: address(handler), selectors: actions});
    }

    /// INV-1: per token, the escrow holds exactly Σ(deposit − settled) over live channels.
    function invariant_escrowBalanceEqualsLiveLiabilities() public view {
        for (uint256 t; t < 2; ++t) {
            address token = handler.tokens(t);
            uint256 owed;
            for (uint256 i; i < handler.ghostCount(); ++i) {
                EscrowHandler.Ghost memory g = handler.ghost(i);
                if (g.token == token && !g.finalized) owed += g.deposit - g.settled;
            }
            vm.assertEq(TestToken(token).balanceOf(address(escrow)), owed, "INV-1 escrow balance");
        }
    }

    /// INV-2: settled ≤ deposit, and the chain agrees with the model field by field.
    function invariant_chainMatchesModel() public view {
        for (uint256 i; i < handler.ghostCount(); ++i) {
            EscrowHandler.Ghost memory g = handler.ghost(i);
            ISluiceEscrow.Channel memory c = escrow.getChannel(g.id);
            vm.assertEq(c.finalized, g.finalized, "finalized");
            if (g.finalized) {
                vm.assertEq(c.payer, address(0), "tombstone payer");
                vm.assertEq(uint256(c.deposit), 0, "tombstone deposit");
                continue;
            }
            vm.assertLe(uint256(c.settled), uint256(c.deposit), "INV-2 settled <= deposit");
            vm.assertEq(uint256(c.deposit), uint256(g.deposit), "deposit");
            vm.assertEq(uint256(c.settled), uint256(g.settled), "settled");
            vm.assertEq(uint256(c.closeRequestedAt), uint256(g.closeRequestedAt), "closeRequestedAt");
            vm.assertEq(c.payer, g.payer, "payer");
            vm.assertEq(c.payee, g.payee, "payee");
            vm.assertEq(c.token, g.token, "token");
            vm.assertEq(c.authorizedSigner, g.authorizedSigner, "signer");
        }
    }

    /// INV-3: a payee never received more from a channel than the highest amount its signer signed.
    function invariant_payeeNeverPaidBeyondSigned() public view {
        for (uint256 i; i < handler.ghostCount(); ++i) {
            EscrowHandler.Ghost memory g = handler.ghost(i);
            vm.assertLe(g.paidToPayee, g.highestSigned, "INV-3 paid <= highest signed");
            vm.assertEq(g.paidToPayee, g.settled, "paid == settled");
        }
    }

    /// INV-4: a finalized channel refunded exactly deposit − settled to its payer.
    function invariant_finalizedRefundedExactly() public view {
        for (uint256 i; i < handler.ghostCount(); ++i) {
            EscrowHandler.Ghost memory g = handler.ghost(i);
            if (g.finalized) {
                vm.assertEq(g.refundedToPayer, g.deposit - g.settled, "INV-4 refund");
            } else {
                vm.assertEq(g.refundedToPayer, 0, "no refund while live");
            }
        }
    }

    /// INV-1 (conservation): every party's balance is exactly what the model says, and no token
    /// was created or lost.
    function invariant_everyBalanceMatchesModel() public view {
        address[] memory holders = handler.holders();
        for (uint256 t; t < 2; ++t) {
            address token = handler.tokens(t);
            uint256 total;
            for (uint256 h; h < holders.length; ++h) {
                total += TestToken(token).balanceOf(holders[h]);
            }
            vm.assertEq(total, handler.minted(token), "conservation");
            for (uint256 h; h < 6; ++h) {
                uint256 expected = h < 3 ? 1e36 : 0;
                for (uint256 i; i < handler.ghostCount(); ++i) {
                    EscrowHandler.Ghost memory g = handler.ghost(i);
                    if (g.token != token) continue;
                    if (g.payer == holders[h]) expected = expected - g.deposit + g.refundedToPayer;
                    if (g.payee == holders[h]) expected += g.paidToPayee;
                }
                vm.assertEq(TestToken(token).balanceOf(holders[h]), expected, "party balance");
            }
        }
    }
}
