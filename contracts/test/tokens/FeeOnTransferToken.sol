// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TokenBase} from "./TokenBase.sol";

/// @title FeeOnTransferToken
/// @notice An ERC-20 that burns `feeBps` basis points of every transfer, so the recipient gets less
///         than the amount asked for. The escrow must refuse it.
contract FeeOnTransferToken is TokenBase {
    /// @notice Fee in basis points (1/10000) of each transfer.
    uint256 public feeBps;

    /// @notice Deploy with a fee in basis points.
    constructor(uint256 feeBps_) TokenBase("Fee Token", "FEE", 18) {
        feeBps = feeBps_;
    }

    /// @notice Change the fee (a token may turn fees on after channels exist).
    function setFeeBps(uint256 feeBps_) external {
        feeBps = feeBps_;
    }

    /// @notice Transfer, minus the fee.
    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount, amount * feeBps / 10_000);
        return true;
    }

    /// @notice TransferFrom, minus the fee.
    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        _spendAllowance(from, amount);
        _move(from, to, amount, amount * feeBps / 10_000);
        return true;
    }
}
