// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

/// @title ISluiceEscrow
/// @notice The Sluice payment-channel escrow: ABI-compatible with the v1 Tempo Stream Channel
///         (`open`, `settle`, `topUp`, `close`, `requestClose`, `withdraw`, the views and the
///         events keep their selectors, topics and tuple order), plus `settleBatch`.
/// @dev A payer locks a deposit of an ERC-20 token for one payee. The payee is paid only
///      against EIP-712 vouchers `Voucher(bytes32 channelId,uint128 cumulativeAmount)` signed
///      by the channel's signer (`authorizedSigner` if non-zero, else the payer); the payer
///      always gets back `deposit - settled` when the channel ends. This file has no imports:
///      it holds every type, event and error of the escrow.
interface ISluiceEscrow {
    /// @notice A channel as the v1 ABI returns it. The field order is part of the ABI.
    struct Channel {
        bool finalized;
        uint64 closeRequestedAt;
        address payer;
        address payee;
        address token;
        address authorizedSigner;
        uint128 deposit;
        uint128 settled;
    }

    /// @notice One channel to settle in `settleBatch`.
    /// @dev The channel is named by its opening parameters rather than by its id: the escrow
    ///      re-derives the id with `msg.sender` as the payee, which proves in one hash that the
    ///      caller is the payee, and which token and signer the channel has, without reading them
    ///      from storage. The parameters are those of the `ChannelOpened` event. The signature is
    ///      in EIP-2098 compact form (`r`, `yParityAndS` = yParity << 255 | s): any low-s 65-byte
    ///      signature converts to it losslessly, and a fixed-size item keeps calldata small.
    struct SettleItem {
        address payer;
        address token;
        bytes32 salt;
        address authorizedSigner;
        uint128 cumulativeAmount;
        bytes32 r;
        bytes32 yParityAndS;
    }

    /// @notice Why a `settleBatch` item was skipped.
    enum SkipReason {
        ChannelNotFound,
        ChannelFinalized,
        AmountExceedsDeposit,
        AmountNotIncreasing,
        MalformedSignature,
        InvalidSignature
    }

    /// @notice What is wrong with a signature's bytes.
    enum SignatureFault {
        /// Neither 65 bytes (r, s, v) nor 64 bytes (EIP-2098 r, yParityAndS).
        Length,
        /// A 65-byte signature whose v is not 27 or 28.
        RecoveryId,
        /// r is zero or not below the secp256k1 group order.
        R,
        /// s is zero or in the upper half of the group order (malleable).
        S
    }

    // ---------------------------------------------------------------- events (v1 ABI)

    /// @notice A channel was opened and its deposit pulled from the payer.
    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address token,
        address authorizedSigner,
        bytes32 salt,
        uint256 deposit
    );

    /// @notice The payee was paid `deltaPaid`, raising the channel's settled amount to `newSettled`.
    event Settled(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        uint256 cumulativeAmount,
        uint256 deltaPaid,
        uint256 newSettled
    );

    /// @notice The payer added `additionalDeposit`; the deposit is now `newDeposit`.
    event TopUp(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        uint256 additionalDeposit,
        uint256 newDeposit
    );

    /// @notice The payer asked to close; it may withdraw from `closeGraceEnd` on.
    event CloseRequested(
        bytes32 indexed channelId, address indexed payer, address indexed payee, uint256 closeGraceEnd
    );

    /// @notice A top-up cancelled a pending close request.
    event CloseRequestCancelled(bytes32 indexed channelId, address indexed payer, address indexed payee);

    /// @notice The channel is finalized: the payee got `settledToPayee` in total over the channel's
    ///         life and the payer was refunded `refundedToPayer`.
    event ChannelClosed(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        uint256 settledToPayee,
        uint256 refundedToPayer
    );

    /// @notice The payer withdrew after the close grace period (followed by `ChannelClosed`).
    event ChannelExpired(bytes32 indexed channelId, address indexed payer, address indexed payee);

    // ---------------------------------------------------------------- events (Sluice)

    /// @notice A `settleBatch` item was not settled; the rest of the batch went on.
    /// @param channelId The id derived from the item (with the caller as payee).
    event SettleSkipped(bytes32 indexed channelId, uint128 cumulativeAmount, SkipReason reason);

    // ---------------------------------------------------------------- errors

    /// @notice `open` for an id that is live or was finalized (ids are never reused).
    error ChannelAlreadyExists(bytes32 channelId);
    /// @notice No channel has this id.
    error ChannelNotFound(bytes32 channelId);
    /// @notice The channel was closed or withdrawn; it can never move funds again.
    error ChannelFinalized(bytes32 channelId);
    /// @notice The signature is well-formed but was not made by the channel's signer.
    error InvalidSignature(bytes32 channelId, address expectedSigner, address recoveredSigner);
    /// @notice The signature bytes are not an acceptable secp256k1 signature.
    error MalformedSignature(bytes32 channelId, SignatureFault fault);
    /// @notice The voucher is worth more than the deposit.
    error AmountExceedsDeposit(bytes32 channelId, uint128 cumulativeAmount, uint128 deposit);
    /// @notice The voucher does not raise the settled amount.
    error AmountNotIncreasing(bytes32 channelId, uint128 cumulativeAmount, uint128 settled);
    /// @notice Only the channel's payer may call this.
    error NotPayer(bytes32 channelId, address caller, address payer);
    /// @notice Only the channel's payee may call this.
    error NotPayee(bytes32 channelId, address caller, address payee);
    /// @notice A token transfer failed (reverted, returned false, or the token has no code).
    error TransferFailed(address token, address from, address to, uint256 amount);
    /// @notice `withdraw` before the grace period of the close request has passed.
    error CloseNotReady(bytes32 channelId, uint256 readyAt);
    /// @notice `withdraw` without a pending close request.
    error CloseNotRequested(bytes32 channelId);
    /// @notice The payee is the zero address.
    error InvalidPayee(address payee);
    /// @notice The deposit would exceed `type(uint128).max`.
    error DepositOverflow(bytes32 channelId, uint256 deposit, uint256 additionalDeposit);
    /// @notice The token address has no code.
    error InvalidToken(address token);
    /// @notice A zero deposit or top-up.
    error ZeroDeposit();
    /// @notice The escrow's balance did not grow by exactly the amount pulled (fee-on-transfer or
    ///         rebasing tokens are refused rather than mis-accounted).
    error FeeOnTransferToken(address token, uint256 expected, uint256 received);
    /// @notice A state-changing function was entered again during a token call.
    error Reentrancy();

    // ---------------------------------------------------------------- payer

    /// @notice Open a channel: `msg.sender` becomes the payer and `deposit` tokens are pulled
    ///         from it (approve the escrow first).
    /// @param payee Who may settle and close; must not be zero.
    /// @param token Any ERC-20 with code. Fee-on-transfer tokens revert `FeeOnTransferToken`.
    /// @param deposit The amount locked; must be non-zero.
    /// @param salt Chosen by the payer to make the id unique.
    /// @param authorizedSigner Signs vouchers instead of the payer when non-zero.
    /// @return channelId `computeChannelId(msg.sender, payee, token, salt, authorizedSigner)`.
    function open(address payee, address token, uint128 deposit, bytes32 salt, address authorizedSigner)
        external
        returns (bytes32 channelId);

    /// @notice Add `additionalDeposit` to a live channel (payer only). Cancels a pending close request.
    /// @param channelId The channel.
    /// @param additionalDeposit Non-zero; the new deposit must fit in uint128.
    function topUp(bytes32 channelId, uint256 additionalDeposit) external;

    /// @notice Start the close grace period (payer only). A second request keeps the first time.
    /// @param channelId The channel.
    function requestClose(bytes32 channelId) external;

    /// @notice After the grace period of a close request, refund `deposit - settled` to the payer
    ///         and finalize the channel (payer only).
    /// @param channelId The channel.
    function withdraw(bytes32 channelId) external;

    // ---------------------------------------------------------------- payee

    /// @notice Pay the payee `cumulativeAmount - settled` against a voucher (payee only).
    /// @param channelId The channel.
    /// @param cumulativeAmount The voucher's amount: above `settled`, at most `deposit`.
    /// @param signature 65 bytes (r, s, v with v 27 or 28) or 64 bytes (EIP-2098), low s.
    function settle(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature) external;

    /// @notice Settle many channels of the caller (as payee) in one transaction. Items that
    ///         cannot settle are skipped with `SettleSkipped`; the payee receives one transfer per
    ///         token for the sum of the rest.
    /// @param items The channels, named by their opening parameters, with their vouchers.
    /// @return settledCount How many items were settled.
    function settleBatch(SettleItem[] calldata items) external returns (uint256 settledCount);

    /// @notice Finalize the channel (payee only): pay the payee up to `cumulativeAmount` (a voucher is
    ///         needed only when it is above `settled`) and refund the rest of the deposit to the payer.
    /// @param channelId The channel.
    /// @param cumulativeAmount The final voucher amount, or anything not above `settled` to close
    ///        without paying more.
    /// @param signature The voucher's signature (ignored when `cumulativeAmount <= settled`).
    function close(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature) external;

    // ---------------------------------------------------------------- views

    /// @notice The channel record; a finalized channel reads as `finalized` with zero fields.
    /// @param channelId The channel.
    /// @return The channel in the v1 tuple order.
    function getChannel(bytes32 channelId) external view returns (Channel memory);

    /// @notice `getChannel` for many ids.
    /// @param channelIds The channels.
    /// @return channelStates One record per id, in order.
    function getChannelsBatch(bytes32[] calldata channelIds) external view returns (Channel[] memory channelStates);

    /// @notice The v1 public getter of the channel record, as separate values.
    /// @param channelId The channel.
    function channels(bytes32 channelId)
        external
        view
        returns (
            bool finalized,
            uint64 closeRequestedAt,
            address payer,
            address payee,
            address token,
            address authorizedSigner,
            uint128 deposit,
            uint128 settled
        );

    /// @notice `keccak256(abi.encode(payer, payee, token, salt, authorizedSigner, address(this), block.chainid))`.
    /// @return The channel id these parameters open.
    function computeChannelId(address payer, address payee, address token, bytes32 salt, address authorizedSigner)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a signer signs for this voucher on this escrow and chain.
    /// @return The digest.
    function getVoucherDigest(bytes32 channelId, uint128 cumulativeAmount) external view returns (bytes32);

    /// @notice The EIP-712 domain separator of this escrow on the current chain.
    /// @return The separator.
    function domainSeparator() external view returns (bytes32);

    /// @notice EIP-5267 description of the EIP-712 domain.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        );

    /// @notice How long after `requestClose` the payer must wait to `withdraw`, in seconds.
    /// @return The grace period.
    function CLOSE_GRACE_PERIOD() external view returns (uint64);

    /// @notice `keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)")`.
    /// @return The typehash.
    function VOUCHER_TYPEHASH() external view returns (bytes32);
}
