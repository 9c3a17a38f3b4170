// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TokenBase} from "./TokenBase.sol";

/// @title NoBoolToken
/// @notice An ERC-20 whose `transfer` and `transferFrom` return nothing (as USDT on Ethereum does).
contract NoBoolToken is TokenBase {
    /// @notice Deploy with fixed metadata.
    constructor() TokenBase("No Bool Token", "NOBOOL", 6) {}

    /// @notice Transfer that returns no value.
    function transfer(address to, uint256 amount) external {
        _move(msg.sender, to, amount, 0);
    }

    /// @notice TransferFrom that returns no value.
    function transferFrom(address from, address to, uint256 amount) external {
        _spendAllowance(from, amount);
        _move(from, to, amount, 0);
    }
}
