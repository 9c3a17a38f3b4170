// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

/// @title TokenBase
/// @notice Minimal ERC-20 bookkeeping shared by the test tokens. Anyone may mint: these tokens
///         exist for tests and local demos only.
abstract contract TokenBase {
    /// @notice ERC-20 name.
    string public name;
    /// @notice ERC-20 symbol.
    string public symbol;
    /// @notice ERC-20 decimals.
    uint8 public immutable decimals;
    /// @notice ERC-20 total supply.
    uint256 public totalSupply;
    /// @notice ERC-20 balances.
    mapping(address owner => uint256) public balanceOf;
    /// @notice ERC-20 allowances.
    mapping(address owner => mapping(address spender => uint256)) public allowance;

    /// @notice ERC-20 transfer event.
    event Transfer(address indexed from, address indexed to, uint256 value);
    /// @notice ERC-20 approval event.
    event Approval(address indexed owner, address indexed spender, uint256 value);

    /// @notice The sender's balance is below the amount.
    error InsufficientBalance(address owner, uint256 balance, uint256 needed);
    /// @notice The spender's allowance is below the amount.
    error InsufficientAllowance(address owner, address spender, uint256 allowance, uint256 needed);

    constructor(string memory name_, string memory symbol_, uint8 decimals_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
    }

    /// @notice Create `amount` tokens for `to`.
    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    /// @notice ERC-20 approve.
    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function _spendAllowance(address owner, uint256 amount) internal {
        uint256 allowed = allowance[owner][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < amount) revert InsufficientAllowance(owner, msg.sender, allowed, amount);
            allowance[owner][msg.sender] = allowed - amount;
        }
    }

    /// @dev Moves `amount` from `from`, of which `amount - burned` reaches `to`.
    function _move(address from, address to, uint256 amount, uint256 burned) internal {
        uint256 balance = balanceOf[from];
        if (balance < amount) revert InsufficientBalance(from, balance, amount);
        balanceOf[from] = balance - amount;
        balanceOf[to] += amount - burned;
        totalSupply -= burned;
        emit Transfer(from, to, amount - burned);
        if (burned != 0) emit Transfer(from, address(0), burned);
    }
}
