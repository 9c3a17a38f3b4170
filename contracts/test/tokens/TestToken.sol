// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TokenBase} from "./TokenBase.sol";

/// @title TestToken
/// @notice A plain ERC-20 with a public `mint`, for tests and the local demo.
contract TestToken is TokenBase {
    /// @notice Deploy with the given metadata.
    constructor(string memory name_, string memory symbol_, uint8 decimals_) TokenBase(name_, symbol_, decimals_) {}

    /// @notice ERC-20 transfer.
    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount, 0);
        return true;
    }

    /// @notice ERC-20 transferFrom.
    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        _spendAllowance(from, amount);
        _move(from, to, amount, 0);
        return true;
    }
}
