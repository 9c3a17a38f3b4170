// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {ISluiceEscrow} from "./interfaces/ISluiceEscrow.sol";

/// @title SluiceEscrow
/// @notice Payment-channel escrow for the MPP `session` intent, ABI-compatible with the v1 Tempo
///         Stream Channel so the mppx v1 client can open channels and sign vouchers for it.
/// @dev Money rules (see INVARIANTS.md at the repository root):
///      - tokens leave the escrow only to a channel's payee (at most the highest cumulative
///        amount its signer signed) or to its payer (exactly `deposit - settled`, once, when the
///        channel is finalized);
///      - every state change happens before any token call, and every state-changing function
///        holds a transient reentrancy lock, so a malicious token cannot observe or exploit a
///        half-updated channel;
///      - a finalized id keeps a tombstone and can never be opened again.
contract SluiceEscrow is ISluiceEscrow {
    /// @inheritdoc ISluiceEscrow
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)");

    /// @notice EIP-712 name used when the constructor is given an empty one.
    string public constant DEFAULT_NAME = "Tempo Stream Channel";
    /// @notice EIP-712 version used when the constructor is given an empty one.
    string public constant DEFAULT_VERSION = "1";
    /// @notice Close grace period used when the constructor is given zero.
    uint64 public constant DEFAULT_CLOSE_GRACE_PERIOD = 15 minutes;

    /// @inheritdoc ISluiceEscrow
    uint64 public immutable CLOSE_GRACE_PERIOD;

    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// secp256k1 group order n, and n / 2 (the largest canonical s).
    uint256 private constant _SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    uint256 private constant _SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    /// Mask clearing the yParity bit of an EIP-2098 `yParityAndS` word.
    uint256 private constant _S_MASK = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF;

    /// `_settleItem` outcomes in assembly, which cannot name enum members: 0 = settled, else
    /// 1 + SkipReason (ChannelNotFound also stands for ChannelFinalized until told apart).
    uint256 private constant _SKIP_NO_LIVE_CHANNEL = 1;
    uint256 private constant _SKIP_AMOUNT_EXCEEDS_DEPOSIT = 3;
    uint256 private constant _SKIP_AMOUNT_NOT_INCREASING = 4;
    uint256 private constant _SKIP_MALFORMED_SIGNATURE = 5;
    uint256 private constant _SKIP_INVALID_SIGNATURE = 6;

    /// @dev Storage layout, chosen for `settleBatch`: the amounts live alone in one slot, which is
    ///      the only slot a batch item reads and writes (the other fields are proven by the
    ///      channel id). A live channel always has `deposit > 0`; a finalized one keeps only
    ///      `finalized = true` in slot 0, so its amounts slot reads as zero.
    struct Record {
        // slot 0
        address payer;
        uint64 closeRequestedAt;
        bool finalized;
        // slot 1
        address payee;
        // slot 2
        address token;
        // slot 3 (left zero when the payer signs its own vouchers)
        address authorizedSigner;
        // slot 4
        uint128 deposit;
        uint128 settled;
    }

    mapping(bytes32 channelId => Record) private _records;

    string private _name;
    string private _version;
    bytes32 private immutable _hashedName;
    bytes32 private immutable _hashedVersion;
    uint256 private immutable _cachedChainId;
    address private immutable _cachedThis;
    bytes32 private immutable _cachedDomainSeparator;

    bool private transient _entered;

    /// @notice Deploy an escrow.
    /// @param name_ EIP-712 domain name; empty means `DEFAULT_NAME`.
    /// @param version_ EIP-712 domain version; empty means `DEFAULT_VERSION`.
    /// @param closeGracePeriod_ Seconds between `requestClose` and `withdraw`; zero means
    ///        `DEFAULT_CLOSE_GRACE_PERIOD`.
    constructor(string memory name_, string memory version_, uint64 closeGracePeriod_) {
        if (bytes(name_).length == 0) name_ = DEFAULT_NAME;
        if (bytes(version_).length == 0) version_ = DEFAULT_VERSION;
        if (closeGracePeriod_ == 0) closeGracePeriod_ = DEFAULT_CLOSE_GRACE_PERIOD;
        _name = name_;
        _version = version_;
        CLOSE_GRACE_PERIOD = closeGracePeriod_;
        _hashedName = keccak256(bytes(name_));
        _hashedVersion = keccak256(bytes(version_));
        _cachedChainId = block.chainid;
        _cachedThis = address(this);
        _cachedDomainSeparator = _buildDomainSeparator(keccak256(bytes(name_)), keccak256(bytes(version_)));
    }

    modifier nonReentrant() {
        if (_entered) revert Reentrancy();
        _entered = true;
        _;
        _entered = false;
    }

    // ================================================================ payer

    /// @inheritdoc ISluiceEscrow
    function open(address payee, address token, uint128 deposit, bytes32 salt, address authorizedSigner)
        external
        nonReentrant
        returns (bytes32 channelId)
    {
        if (payee == address(0)) revert InvalidPayee(payee);
        if (token.code.length == 0) revert InvalidToken(token);
        if (deposit == 0) revert ZeroDeposit();

        channelId = _channelId(msg.sender, payee, token, salt, authorizedSigner);
        Record storage rec = _records[channelId];
        // A live channel has a payer; a finalized one keeps its tombstone.
        if (rec.payer != address(0) || rec.finalized) revert ChannelAlreadyExists(channelId);

        rec.payer = msg.sender;
        rec.payee = payee;
        rec.token = token;
        if (authorizedSigner != address(0)) rec.authorizedSigner = authorizedSigner;
        rec.deposit = deposit;
        emit ChannelOpened(channelId, msg.sender, payee, token, authorizedSigner, salt, deposit);

        _pullExactly(token, msg.sender, deposit);
    }

    /// @inheritdoc ISluiceEscrow
    function topUp(bytes32 channelId, uint256 additionalDeposit) external nonReentrant {
        Record storage rec = _liveRecord(channelId);
        address payer = rec.payer;
        if (msg.sender != payer) revert NotPayer(channelId, msg.sender, payer);
        if (additionalDeposit == 0) revert ZeroDeposit();
        uint256 deposit = rec.deposit;
        if (additionalDeposit > type(uint128).max - deposit) {
            revert DepositOverflow(channelId, deposit, additionalDeposit);
        }

        uint256 newDeposit = deposit + additionalDeposit;
        rec.deposit = uint128(newDeposit);
        address payee = rec.payee;
        if (rec.closeRequestedAt != 0) {
            rec.closeRequestedAt = 0;
            emit CloseRequestCancelled(channelId, payer, payee);
        }
        emit TopUp(channelId, payer, payee, additionalDeposit, newDeposit);

        _pullExactly(rec.token, payer, additionalDeposit);
    }

    /// @inheritdoc ISluiceEscrow
    function requestClose(bytes32 channelId) external nonReentrant {
        Record storage rec = _liveRecord(channelId);
        address payer = rec.payer;
        if (msg.sender != payer) revert NotPayer(channelId, msg.sender, payer);
        // A repeated request must not push the payee's deadline further away or closer.
        if (rec.closeRequestedAt == 0) {
            rec.closeRequestedAt = uint64(block.timestamp);
            emit CloseRequested(channelId, payer, rec.payee, block.timestamp + CLOSE_GRACE_PERIOD);
        }
    }

    /// @inheritdoc ISluiceEscrow
    function withdraw(bytes32 channelId) external nonReentrant {
        Record storage rec = _liveRecord(channelId);
        address payer = rec.payer;
        if (msg.sender != payer) revert NotPayer(channelId, msg.sender, payer);
        uint256 requestedAt = rec.closeRequestedAt;
        if (requestedAt == 0) revert CloseNotRequested(channelId);
        uint256 readyAt = requestedAt + CLOSE_GRACE_PERIOD;
        if (block.timestamp < readyAt) revert CloseNotReady(channelId, readyAt);

        address payee = rec.payee;
        address token = rec.token;
        uint128 settled = rec.settled;
        uint128 refund = rec.deposit - settled;
        _finalize(channelId);
        emit ChannelExpired(channelId, payer, payee);
        emit ChannelClosed(channelId, payer, payee, settled, refund);

        if (refund != 0) _pay(token, payer, refund);
    }

    // ================================================================ payee

    /// @inheritdoc ISluiceEscrow
    function settle(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature) external nonReentrant {
        Record storage rec = _liveRecord(channelId);
        address payee = rec.payee;
        if (msg.sender != payee) revert NotPayee(channelId, msg.sender, payee);
        uint128 deposit = rec.deposit;
        uint128 settled = rec.settled;
        if (cumulativeAmount > deposit) revert AmountExceedsDeposit(channelId, cumulativeAmount, deposit);
        if (cumulativeAmount <= settled) revert AmountNotIncreasing(channelId, cumulativeAmount, settled);
        address payer = rec.payer;
        _requireVoucherSigner(channelId, cumulativeAmount, signature, _signerOf(rec, payer));

        rec.settled = cumulativeAmount;
        uint128 delta = cumulativeAmount - settled;
        emit Settled(channelId, payer, payee, cumulativeAmount, delta, cumulativeAmount);

        _pay(rec.token, payee, delta);
    }

    /// @inheritdoc ISluiceEscrow
    function settleBatch(SettleItem[] calldata items) external nonReentrant returns (uint256 settledCount) {
        bytes32 separator = _domainSeparator();
        // Payouts per token, made once every channel is updated: one transfer per token. Items
        // of one token usually come together, so the running total of the current run of equal
        // tokens stays on the stack and is folded into these arrays only when the token changes.
        address[] memory tokens = new address[](items.length);
        uint256[] memory totals = new uint256[](items.length);
        uint256 distinct;
        address runToken;
        uint256 runTotal;

        for (uint256 i; i < items.length; ++i) {
            (address token, uint256 paid) = _settleItem(items[i], separator);
            if (paid == 0) continue;
            if (token != runToken) {
                distinct = _fold(tokens, totals, distinct, runToken, runTotal);
                runToken = token;
                runTotal = 0;
            }
            // Cannot overflow: each payment is below 2^128 and the batch is bounded by calldata.
            unchecked {
                runTotal += paid;
                ++settledCount;
            }
        }
        distinct = _fold(tokens, totals, distinct, runToken, runTotal);

        for (uint256 k; k < distinct; ++k) {
            _pay(tokens[k], msg.sender, totals[k]);
        }
    }

    /// @inheritdoc ISluiceEscrow
    function close(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature) external nonReentrant {
        Record storage rec = _liveRecord(channelId);
        address payee = rec.payee;
        if (msg.sender != payee) revert NotPayee(channelId, msg.sender, payee);
        address payer = rec.payer;
        uint128 deposit = rec.deposit;
        uint128 settled = rec.settled;

        uint128 finalSettled = settled;
        if (cumulativeAmount > settled) {
            if (cumulativeAmount > deposit) revert AmountExceedsDeposit(channelId, cumulativeAmount, deposit);
            _requireVoucherSigner(channelId, cumulativeAmount, signature, _signerOf(rec, payer));
            finalSettled = cumulativeAmount;
        }
        address token = rec.token;
        uint128 delta = finalSettled - settled;
        uint128 refund = deposit - finalSettled;
        _finalize(channelId);
        emit ChannelClosed(channelId, payer, payee, finalSettled, refund);

        if (delta != 0) _pay(token, payee, delta);
        if (refund != 0) _pay(token, payer, refund);
    }

    // ================================================================ views

    /// @inheritdoc ISluiceEscrow
    function getChannel(bytes32 channelId) external view returns (Channel memory) {
        return _view(channelId);
    }

    /// @inheritdoc ISluiceEscrow
    function getChannelsBatch(bytes32[] calldata channelIds) external view returns (Channel[] memory channelStates) {
        channelStates = new Channel[](channelIds.length);
        for (uint256 i; i < channelIds.length; ++i) {
            channelStates[i] = _view(channelIds[i]);
        }
    }

    /// @inheritdoc ISluiceEscrow
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
        )
    {
        Channel memory c = _view(channelId);
        return (c.finalized, c.closeRequestedAt, c.payer, c.payee, c.token, c.authorizedSigner, c.deposit, c.settled);
    }

    /// @inheritdoc ISluiceEscrow
    function computeChannelId(address payer, address payee, address token, bytes32 salt, address authorizedSigner)
        external
        view
        returns (bytes32)
    {
        return _channelId(payer, payee, token, salt, authorizedSigner);
    }

    /// @inheritdoc ISluiceEscrow
    function getVoucherDigest(bytes32 channelId, uint128 cumulativeAmount) external view returns (bytes32) {
        return _voucherDigest(channelId, cumulativeAmount);
    }

    /// @inheritdoc ISluiceEscrow
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparator();
    }

    /// @inheritdoc ISluiceEscrow
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
        )
    {
        // 0x0f: name, version, chainId and verifyingContract are set; no salt, no extensions.
        return (hex"0f", _name, _version, block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    // ================================================================ internals

    /// @dev Settles one `settleBatch` item for `msg.sender` as payee, or emits `SettleSkipped`.
    ///      Returns the item's token and the amount now owed to the payee (zero when skipped).
    ///      Written in assembly because it runs once per channel of every batch: it reads the
    ///      item straight from calldata, touches exactly one storage slot (the amounts word),
    ///      and hashes and recovers in scratch memory, so a batch never grows memory per item.
    ///      The checks and their order are those of `settle`.
    function _settleItem(SettleItem calldata item, bytes32 separator) private returns (address token, uint256 paid) {
        bytes32 channelId;
        uint256 cumulativeAmount;
        uint256 skip; // 0 when settled, else one of the _SKIP_* codes
        bytes32 settledTopic = Settled.selector;
        bytes32 voucherTypehash = VOUCHER_TYPEHASH;
        assembly ("memory-safe") {
            let payer := calldataload(item)
            token := calldataload(add(item, 0x20))
            let signer := calldataload(add(item, 0x60))
            cumulativeAmount := calldataload(add(item, 0x80))
            // The ABI decoder's cleanliness checks for the address and uint128 fields.
            if or(or(shr(160, payer), shr(160, token)), or(shr(160, signer), shr(128, cumulativeAmount))) {
                revert(0, 0)
            }

            // channelId = keccak256(abi.encode(payer, msg.sender, token, salt, signer, this, chainid))
            let m := mload(0x40)
            mstore(m, payer)
            mstore(add(m, 0x20), caller())
            mstore(add(m, 0x40), token)
            mstore(add(m, 0x60), calldataload(add(item, 0x40)))
            mstore(add(m, 0x80), signer)
            mstore(add(m, 0xa0), address())
            mstore(add(m, 0xc0), chainid())
            channelId := keccak256(m, 0xe0)

            // The amounts word of _records[channelId]: deposit low, settled high.
            mstore(0x00, channelId)
            mstore(0x20, _records.slot)
            let slot := add(keccak256(0x00, 0x40), 4)
            let word := sload(slot)
            let deposit := and(word, 0xffffffffffffffffffffffffffffffff)
            let settled := shr(128, word)

            switch iszero(deposit)
            case 1 { skip := _SKIP_NO_LIVE_CHANNEL } // unknown or finalized: told apart below
            default {
                switch gt(cumulativeAmount, deposit)
                case 1 { skip := _SKIP_AMOUNT_EXCEEDS_DEPOSIT }
                default {
                    switch iszero(gt(cumulativeAmount, settled))
                    case 1 { skip := _SKIP_AMOUNT_NOT_INCREASING }
                    default {
                        let r := calldataload(add(item, 0xa0))
                        let vs := calldataload(add(item, 0xc0))
                        let s := and(vs, _S_MASK)
                        switch or(or(iszero(r), iszero(lt(r, _SECP256K1_N))), or(iszero(s), gt(s, _SECP256K1_HALF_N)))
                        case 1 { skip := _SKIP_MALFORMED_SIGNATURE }
                        default {
                            // digest = keccak256("\x19\x01" ‖ separator ‖ keccak256(typehash, id, amount))
                            mstore(m, voucherTypehash)
                            mstore(add(m, 0x20), channelId)
                            mstore(add(m, 0x40), cumulativeAmount)
                            let structHash := keccak256(m, 0x60)
                            mstore(m, shl(240, 0x1901))
                            mstore(add(m, 0x02), separator)
                            mstore(add(m, 0x22), structHash)
                            let digest := keccak256(m, 0x42)

                            mstore(m, digest)
                            mstore(add(m, 0x20), add(shr(255, vs), 27))
                            mstore(add(m, 0x40), r)
                            mstore(add(m, 0x60), s)
                            mstore(0x00, 0)
                            pop(staticcall(gas(), 0x01, m, 0x80, 0x00, 0x20))
                            if iszero(signer) { signer := payer }
                            switch eq(mload(0x00), signer)
                            case 0 { skip := _SKIP_INVALID_SIGNATURE }
                            default {
                                sstore(slot, or(deposit, shl(128, cumulativeAmount)))
                                paid := sub(cumulativeAmount, settled)
                                mstore(m, cumulativeAmount)
                                mstore(add(m, 0x20), paid)
                                mstore(add(m, 0x40), cumulativeAmount)
                                log4(m, 0x60, settledTopic, channelId, payer, caller())
                            }
                        }
                    }
                }
            }
        }
        if (skip != 0) {
            SkipReason reason = SkipReason(skip - 1);
            if (reason == SkipReason.ChannelNotFound && _records[channelId].finalized) {
                reason = SkipReason.ChannelFinalized;
            }
            emit SettleSkipped(channelId, uint128(cumulativeAmount), reason);
        }
    }

    /// @dev Adds a run's total to its token's entry in (tokens, totals), appending the token if new.
    ///      Returns the new number of distinct tokens.
    function _fold(address[] memory tokens, uint256[] memory totals, uint256 distinct, address token, uint256 total)
        private
        pure
        returns (uint256)
    {
        if (total == 0) return distinct;
        for (uint256 k; k < distinct; ++k) {
            if (tokens[k] == token) {
                unchecked {
                    totals[k] += total;
                }
                return distinct;
            }
        }
        tokens[distinct] = token;
        totals[distinct] = total;
        return distinct + 1;
    }

    /// @dev The record of a channel that can still move funds, or the matching revert.
    function _liveRecord(bytes32 channelId) private view returns (Record storage rec) {
        rec = _records[channelId];
        if (rec.payer == address(0)) {
            if (rec.finalized) revert ChannelFinalized(channelId);
            revert ChannelNotFound(channelId);
        }
    }

    function _view(bytes32 channelId) private view returns (Channel memory c) {
        Record storage rec = _records[channelId];
        c.finalized = rec.finalized;
        c.closeRequestedAt = rec.closeRequestedAt;
        c.payer = rec.payer;
        c.payee = rec.payee;
        c.token = rec.token;
        c.authorizedSigner = rec.authorizedSigner;
        c.deposit = rec.deposit;
        c.settled = rec.settled;
    }

    /// @dev Clears the record, keeping a tombstone so the id can never be opened again.
    function _finalize(bytes32 channelId) private {
        delete _records[channelId];
        _records[channelId].finalized = true;
    }

    function _signerOf(Record storage rec, address payer) private view returns (address signer) {
        signer = rec.authorizedSigner;
        if (signer == address(0)) signer = payer;
    }

    function _channelId(address payer, address payee, address token, bytes32 salt, address authorizedSigner)
        private
        view
        returns (bytes32 id)
    {
        // keccak256(abi.encode(payer, payee, token, salt, authorizedSigner, address(this), chainid)),
        // hashed in scratch memory above the free pointer so a batch does not grow memory.
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, payer)
            mstore(add(m, 0x20), payee)
            mstore(add(m, 0x40), token)
            mstore(add(m, 0x60), salt)
            mstore(add(m, 0x80), authorizedSigner)
            mstore(add(m, 0xa0), address())
            mstore(add(m, 0xc0), chainid())
            id := keccak256(m, 0xe0)
        }
    }

    function _domainSeparator() private view returns (bytes32) {
        // Recomputed only after a chain fork changes the chain id, or when called through a
        // delegatecall (where the verifying contract is the caller).
        if (block.chainid == _cachedChainId && address(this) == _cachedThis) return _cachedDomainSeparator;
        return _buildDomainSeparator(_hashedName, _hashedVersion);
    }

    function _buildDomainSeparator(bytes32 hashedName, bytes32 hashedVersion) private view returns (bytes32) {
        return keccak256(abi.encode(_DOMAIN_TYPEHASH, hashedName, hashedVersion, block.chainid, address(this)));
    }

    function _voucherDigest(bytes32 channelId, uint128 cumulativeAmount) private view returns (bytes32 digest) {
        bytes32 separator = _domainSeparator();
        bytes32 typehash = VOUCHER_TYPEHASH;
        // keccak256("\x19\x01" ‖ separator ‖ keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, amount))),
        // in scratch memory above the free pointer.
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), channelId)
            mstore(add(m, 0x40), cumulativeAmount)
            let structHash := keccak256(m, 0x60)
            mstore(m, shl(240, 0x1901))
            mstore(add(m, 0x02), separator)
            mstore(add(m, 0x22), structHash)
            digest := keccak256(m, 0x42)
        }
    }

    /// @dev Parses a 65-byte (r, s, v) or 64-byte EIP-2098 signature, rejecting anything
    ///      malleable or out of range, and recovers its signer (zero if the precompile fails).
    function _recover(bytes32 digest, bytes calldata signature)
        private
        view
        returns (address signer, bool malformed, SignatureFault fault)
    {
        bytes32 r;
        uint256 s;
        uint8 v;
        if (signature.length == 65) {
            r = bytes32(signature[0:32]);
            s = uint256(bytes32(signature[32:64]));
            v = uint8(signature[64]);
            if (v != 27 && v != 28) return (address(0), true, SignatureFault.RecoveryId);
        } else if (signature.length == 64) {
            r = bytes32(signature[0:32]);
            uint256 vs = uint256(bytes32(signature[32:64]));
            s = vs & _S_MASK;
            v = uint8(vs >> 255) + 27;
        } else {
            return (address(0), true, SignatureFault.Length);
        }
        if (r == 0 || uint256(r) >= _SECP256K1_N) return (address(0), true, SignatureFault.R);
        if (s == 0 || s > _SECP256K1_HALF_N) return (address(0), true, SignatureFault.S);
        signer = _ecrecover(digest, v, r, s);
    }

    /// @dev The ecrecover precompile, called in scratch memory; zero when it recovers nothing.
    function _ecrecover(bytes32 digest, uint8 v, bytes32 r, uint256 s) private view returns (address signer) {
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, digest)
            mstore(add(m, 0x20), v)
            mstore(add(m, 0x40), r)
            mstore(add(m, 0x60), s)
            mstore(0x00, 0)
            pop(staticcall(gas(), 0x01, m, 0x80, 0x00, 0x20))
            signer := mload(0x00)
        }
    }

    function _requireVoucherSigner(
        bytes32 channelId,
        uint128 cumulativeAmount,
        bytes calldata signature,
        address expected
    ) private view {
        (address recovered, bool malformed, SignatureFault fault) =
            _recover(_voucherDigest(channelId, cumulativeAmount), signature);
        if (malformed) revert MalformedSignature(channelId, fault);
        if (recovered != expected) revert InvalidSignature(channelId, expected, recovered);
    }

    /// @dev Pulls `amount` from `from` and requires the escrow's balance to grow by exactly that.
    function _pullExactly(address token, address from, uint256 amount) private {
        uint256 before = _balanceOf(token);
        if (!_call(token, abi.encodeCall(IERC20Minimal.transferFrom, (from, address(this), amount)))) {
            revert TransferFailed(token, from, address(this), amount);
        }
        uint256 afterwards = _balanceOf(token);
        uint256 received = afterwards > before ? afterwards - before : 0;
        if (received != amount) revert FeeOnTransferToken(token, amount, received);
    }

    function _pay(address token, address to, uint256 amount) private {
        if (!_call(token, abi.encodeCall(IERC20Minimal.transfer, (to, amount)))) {
            revert TransferFailed(token, address(this), to, amount);
        }
    }

    /// @dev Calls an ERC-20 function that may return a bool or nothing. Success means the call
    ///      did not revert and returned either nothing (from a contract with code) or exactly
    ///      `true`. At most one word of return data is copied, so a hostile token cannot make
    ///      the escrow pay for a huge return buffer.
    function _call(address token, bytes memory data) private returns (bool ok) {
        assembly ("memory-safe") {
            mstore(0x00, 0)
            let success := call(gas(), token, 0, add(data, 0x20), mload(data), 0x00, 0x20)
            switch returndatasize()
            case 0 { ok := and(success, gt(extcodesize(token), 0)) }
            default { ok := and(success, and(gt(returndatasize(), 0x1f), eq(mload(0x00), 1))) }
        }
    }

    function _balanceOf(address token) private view returns (uint256 balance) {
        (bool success, bytes memory ret) = token.staticcall(abi.encodeCall(IERC20Minimal.balanceOf, (address(this))));
        if (!success || ret.length < 32) revert InvalidToken(token);
        balance = abi.decode(ret, (uint256));
    }
}

/// @dev The three ERC-20 functions the escrow calls (encoding only).
interface IERC20Minimal {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function balanceOf(address owner) external view returns (uint256);
}
