// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TokenBase} from "./TokenBase.sol";

/// @title ReentrantToken
/// @notice An ERC-20 that, once armed, calls a target with fixed calldata from inside
///         `transfer`/`transferFrom` (before moving the tokens) to try to re-enter the escrow.
///         The re-entrant call's outcome is recorded, not bubbled, so a test can check both that
///         the attempt was made and that it failed, and that the outer operation's books are right.
contract ReentrantToken is TokenBase {
    /// @notice Where the re-entrant call goes.
    address public target;
    /// @notice The re-entrant call's calldata.
    bytes public attack;
    /// @notice How many re-entrant calls were attempted.
    uint256 public attempts;
    /// @notice How many re-entrant calls succeeded (must stay zero against the escrow).
    uint256 public successes;
    /// @notice Revert data of the last failed re-entrant call.
    bytes public lastRevertData;

    /// @notice Deploy with fixed metadata.
    constructor() TokenBase("Reentrant Token", "REENTER", 18) {}

    /// @notice Arm the token: every later transfer calls `target_` with `attack_` once per transfer.
    function arm(address target_, bytes calldata attack_) external {
        target = target_;
        attack = attack_;
    }

    /// @notice Disarm the token.
    function disarm() external {
        target = address(0);
        delete attack;
    }

    /// @notice ERC-20 transfer with the re-entry attempt.
    function transfer(address to, uint256 amount) external returns (bool) {
        _reenter();
        _move(msg.sender, to, amount, 0);
        return true;
    }

    /// @notice ERC-20 transferFrom with the re-entry attempt.
    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        _reenter();
        _spendAllowance(from, amount);
        _move(from, to, amount, 0);
        return true;
    }

    function _reenter() private {
        address t = target;
        if (t == address(0)) return;
        attempts += 1;
        (bool ok, bytes memory ret) = t.call(attack);
        if (ok) successes += 1;
        else lastRevertData = ret;
    }
}
