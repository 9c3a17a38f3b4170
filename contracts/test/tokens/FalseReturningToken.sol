// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TokenBase} from "./TokenBase.sol";

/// @title FalseReturningToken
/// @notice An ERC-20 that, once told to, signals failure by returning `false` instead of reverting
///         (and moves nothing). Forge tests use it for the escrow's `TransferFailed` path.
contract FalseReturningToken is TokenBase {
    /// @notice When true, transfers return false and move nothing.
    bool public failing;

    /// @notice Deploy with fixed metadata.
    constructor() TokenBase("False Token", "FALSE", 18) {}

    /// @notice Switch failure mode on or off.
    function setFailing(bool failing_) external {
        failing = failing_;
    }

    /// @notice ERC-20 transfer, or `false` when failing.
    function transfer(address to, uint256 amount) external returns (bool) {
        if (failing) return false;
        _move(msg.sender, to, amount, 0);
        return true;
    }

    /// @notice ERC-20 transferFrom, or `false` when failing.
    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        if (failing) return false;
        _spendAllowance(from, amount);
        _move(from, to, amount, 0);
        return true;
    }
}
