// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {EscrowTestBase} from "./utils/EscrowTestBase.sol";
import {ISluiceEscrow} from "../src/interfaces/ISluiceEscrow.sol";
import {TestToken} from "./tokens/TestToken.sol";

/// @notice Signature formats, voucher binding (no replay across channel, escrow or chain), the
///         EIP-712 views, and the mppx 0.11.0 vectors.
contract SignaturesTest is EscrowTestBase {
    // Facts from testdata/mppx-0.11.0 (eip712-vouchers.json, channel-ids.json).
    address internal constant VECTOR_TOKEN = 0x5FbDB2315678afecb367f032d93F642f64180aa3;
    address internal constant VECTOR_ESCROW = 0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512;
    bytes32 internal constant VECTOR_SALT = 0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;
    bytes32 internal constant VECTOR_CHANNEL = 0x5ccc5ed2b18a0a89493ae68350766f15444b0c1b7e01665dcacd115121143869;
    bytes32 internal constant VECTOR_DELEGATED_CHANNEL =
        0xe3e719f3b772636a3a67b3b8061b4cd7dd48eab05500a325578c0750f3367bc6;
    bytes32 internal constant VECTOR_SEPARATOR = 0x5c830a59704c7064185feadedaaa723fe92a77749753deefe805d9fc92852b56;
    bytes32 internal constant VECTOR_DIGEST_0 = 0x78d5f8d30bca38c8e6a61e5f4d8ae1f79d09f3f6a31f610e1540f2aa809a0361;
    bytes32 internal constant VECTOR_DIGEST_250K = 0xa867e3e614d0d7a3dec23ecda6f081c45a2945bb045e0d3b9684c0c778e974af;
    bytes32 internal constant VECTOR_DIGEST_DELEGATED =
        0x0906d1f8e04ca5130f2dcd50291f8359dd5b80af82e873b44064647cdd38defc;
    bytes32 internal constant VECTOR_TYPEHASH = 0xe97c93f01d3ef8eaba1586553df13308f236815bf4ea49c7b696895d8f5ea68a;
    bytes internal constant VECTOR_SIG_250K =
        hex"738d45f2ea786c6dfe973156776ac29fec47466c6f21166ba5713cc682a583fa5a3b4f0765987445dd4f181d6820dcc9b5caa165a3e29de4f6f39b35929de6c71b";
    bytes internal constant VECTOR_SIG_250K_V01 =
        hex"738d45f2ea786c6dfe973156776ac29fec47466c6f21166ba5713cc682a583fa5a3b4f0765987445dd4f181d6820dcc9b5caa165a3e29de4f6f39b35929de6c700";
    bytes internal constant VECTOR_SIG_250K_COMPACT =
        hex"738d45f2ea786c6dfe973156776ac29fec47466c6f21166ba5713cc682a583fa5a3b4f0765987445dd4f181d6820dcc9b5caa165a3e29de4f6f39b35929de6c7";
    bytes internal constant VECTOR_SIG_250K_HIGH_S =
        hex"738d45f2ea786c6dfe973156776ac29fec47466c6f21166ba5713cc682a583faa5c4b0f89a678bba22b0e7e297df233504e43b810b660256c8dec3573d985a7a1c";
    bytes internal constant VECTOR_SIG_DELEGATED =
        hex"e657b710188d6c1360befbb3aa07e142d580f9ed3be09ded709a93bd84e4e7036b20b20c32c1c965dab68fe3a793941e8cbc984472414ff760b4d7b554c464b01c";
    bytes internal constant VECTOR_SIG_DELEGATED_COMPACT =
        hex"e657b710188d6c1360befbb3aa07e142d580f9ed3be09ded709a93bd84e4e703eb20b20c32c1c965dab68fe3a793941e8cbc984472414ff760b4d7b554c464b0";
    address internal constant MAINNET_LEGACY_ESCROW = 0x33b901018174DDabE4841042ab76ba85D4e24f25;
    bytes32 internal constant MAINNET_DIGEST_1M = 0x695463890267b80f1bb662713887a4d6877731b7d185e7c37eb886e899c0e0ac;

    // ================================================================ malformed signatures

    function test_settle_RevertIf_SignatureEmpty() public {
        _expectMalformed("", ISluiceEscrow.SignatureFault.Length);
    }

    function test_settle_RevertIf_Signature63Bytes() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        _expectMalformedOn(id, _slice(sig, 63), ISluiceEscrow.SignatureFault.Length);
    }

    function test_settle_RevertIf_Signature66Bytes() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = abi.encodePacked(_sign(escrow, PAYER_KEY, id, 10), hex"00");
        _expectMalformedOn(id, sig, ISluiceEscrow.SignatureFault.Length);
    }

    function test_settle_RevertIf_RecoveryIdZeroOrOne() public {
        bytes32 id = _open(DEPOSIT);
        (bytes32 r, bytes32 s, uint8 v) = _split(_sign(escrow, PAYER_KEY, id, 10));
        _expectMalformedOn(id, abi.encodePacked(r, s, v - 27), ISluiceEscrow.SignatureFault.RecoveryId);
        _expectMalformedOn(id, abi.encodePacked(r, s, uint8(29)), ISluiceEscrow.SignatureFault.RecoveryId);
    }

    function test_settle_RevertIf_HighS() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        // The malleated twin recovers to the same key, so only the s check stops it.
        (bytes32 r, bytes32 s, uint8 v) = _split(_highS(sig));
        vm.assertEq(ecrecover(escrow.getVoucherDigest(id, 10), v, r, s), payer, "twin recovers payer");
        _expectMalformedOn(id, _highS(sig), ISluiceEscrow.SignatureFault.S);
    }

    function test_settle_RevertIf_CompactHighS() public {
        bytes32 id = _open(DEPOSIT);
        (bytes32 r,,) = _split(_sign(escrow, PAYER_KEY, id, 10));
        // The largest s values fit below the yParity bit; anything above n/2 is refused.
        uint256 highS = (SECP256K1_N >> 1) + 1;
        _expectMalformedOn(id, abi.encodePacked(r, bytes32(highS)), ISluiceEscrow.SignatureFault.S);
        _expectMalformedOn(id, abi.encodePacked(r, bytes32(highS | (1 << 255))), ISluiceEscrow.SignatureFault.S);
    }

    function test_settle_RevertIf_CompactFormOfMalleatedTwin() public {
        bytes32 id = _open(DEPOSIT);
        (bytes32 r, bytes32 s, uint8 v) = _split(_highS(_sign(escrow, PAYER_KEY, id, 10)));
        // n - s sets the top bit, which compact form reads as yParity: s changes and so does the signer.
        bytes memory compact = abi.encodePacked(r, bytes32(uint256(s) | (uint256(v - 27) << 255)));
        vm.prank(payee);
        try escrow.settle(id, 10, compact) {
            revert("malleated compact signature settled");
        } catch (bytes memory reason) {
            vm.assertTrue(
                bytes4(reason) == ISluiceEscrow.InvalidSignature.selector
                    || bytes4(reason) == ISluiceEscrow.MalformedSignature.selector,
                "typed signature error"
            );
        }
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
    }

    function test_settle_RevertIf_ZeroS() public {
        bytes32 id = _open(DEPOSIT);
        (bytes32 r,, uint8 v) = _split(_sign(escrow, PAYER_KEY, id, 10));
        _expectMalformedOn(id, abi.encodePacked(r, bytes32(0), v), ISluiceEscrow.SignatureFault.S);
    }

    function test_settle_RevertIf_ZeroR() public {
        bytes32 id = _open(DEPOSIT);
        (, bytes32 s, uint8 v) = _split(_sign(escrow, PAYER_KEY, id, 10));
        _expectMalformedOn(id, abi.encodePacked(bytes32(0), s, v), ISluiceEscrow.SignatureFault.R);
    }

    function test_settle_RevertIf_RNotBelowGroupOrder() public {
        bytes32 id = _open(DEPOSIT);
        (, bytes32 s, uint8 v) = _split(_sign(escrow, PAYER_KEY, id, 10));
        _expectMalformedOn(id, abi.encodePacked(bytes32(SECP256K1_N), s, v), ISluiceEscrow.SignatureFault.R);
    }

    function test_settle_RevertIf_RNotOnCurve() public {
        bytes32 id = _open(DEPOSIT);
        // r = 5 is below n but no curve point has x = 5: the precompile recovers nothing.
        (, bytes32 s, uint8 v) = _split(_sign(escrow, PAYER_KEY, id, 10));
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidSignature.selector, id, payer, address(0)));
        vm.prank(payee);
        escrow.settle(id, 10, abi.encodePacked(bytes32(uint256(5)), s, v));
    }

    function testFuzz_settle_RevertIf_RandomSignatureBytes(bytes memory sig) public {
        bytes32 id = _open(DEPOSIT);
        vm.prank(payee);
        try escrow.settle(id, 10, sig) {
            revert("random bytes settled a channel");
        } catch (bytes memory reason) {
            bytes4 selector = bytes4(reason);
            vm.assertTrue(
                selector == ISluiceEscrow.MalformedSignature.selector
                    || selector == ISluiceEscrow.InvalidSignature.selector,
                "typed signature error"
            );
        }
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
    }

    function testFuzz_settle_AnyDelegatedKeyInEitherFormat(uint256 key, uint128 amount) public {
        key = _bound(key, 1, SECP256K1_N - 1);
        amount = uint128(_bound(amount, 1, DEPOSIT));
        address signer = vm.addr(key);
        bytes32 id = _openWith(address(token), DEPOSIT, SALT, signer);
        bytes memory sig = _sign(escrow, key, id, amount);
        bytes memory compact = _signCompact(escrow, key, id, amount);
        vm.prank(payee);
        escrow.settle(id, amount, amount == DEPOSIT ? sig : compact);
        vm.assertEq(token.balanceOf(payee), amount, "paid");
    }

    // ================================================================ no replay

    function test_settle_RevertIf_VoucherOfAnotherChannel() public {
        bytes32 a = _open(DEPOSIT);
        bytes32 b = _openWith(address(token), DEPOSIT, bytes32(uint256(2)), address(0));
        bytes memory sigForA = _sign(escrow, PAYER_KEY, a, 10);
        (bytes32 r, bytes32 s, uint8 v) = _split(sigForA);
        address recovered = ecrecover(escrow.getVoucherDigest(b, 10), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.InvalidSignature.selector, b, payer, recovered));
        vm.prank(payee);
        escrow.settle(b, 10, sigForA);
    }

    function test_settle_RevertIf_VoucherOfAnotherEscrow() public {
        ISluiceEscrow other = _deployEscrow("", "", 0);
        bytes32 id = _open(DEPOSIT);
        // The same channel id, signed for the other escrow's domain.
        bytes memory sig = _sign(other, PAYER_KEY, id, 10);
        vm.assertTrue(other.getVoucherDigest(id, 10) != escrow.getVoucherDigest(id, 10), "digests differ");
        vm.prank(payee);
        try escrow.settle(id, 10, sig) {
            revert("cross-escrow replay settled");
        } catch (bytes memory reason) {
            vm.assertEq(bytes4(reason), ISluiceEscrow.InvalidSignature.selector, "InvalidSignature");
        }
    }

    function test_settle_RevertIf_VoucherOfAnotherChain() public {
        bytes32 id = _open(DEPOSIT);
        bytes memory sig = _sign(escrow, PAYER_KEY, id, 10);
        bytes32 separatorHere = escrow.domainSeparator();
        vm.chainId(4217);
        vm.assertTrue(escrow.domainSeparator() != separatorHere, "separator follows chain id");
        vm.prank(payee);
        try escrow.settle(id, 10, sig) {
            revert("cross-chain replay settled");
        } catch (bytes memory reason) {
            vm.assertEq(bytes4(reason), ISluiceEscrow.InvalidSignature.selector, "InvalidSignature");
        }
    }

    function test_settle_RevertIf_VoucherOfAnotherDomainName() public {
        ISluiceEscrow evm = _deployEscrow("EVM Payment Channel", "1", 0);
        vm.prank(payer);
        token.approve(address(evm), DEPOSIT);
        vm.prank(payer);
        bytes32 id = evm.open(payee, address(token), DEPOSIT, SALT, address(0));
        // A voucher signed under the default name, for this very escrow and chain, is refused.
        bytes32 wrongDigest = _expectedDigest("Tempo Stream Channel", "1", block.chainid, address(evm), id, 10);
        bytes memory sig = _signDigest(PAYER_KEY, wrongDigest);
        vm.prank(payee);
        try evm.settle(id, 10, sig) {
            revert("wrong-domain voucher settled");
        } catch (bytes memory reason) {
            vm.assertEq(bytes4(reason), ISluiceEscrow.InvalidSignature.selector, "InvalidSignature");
        }
        bytes memory good = _sign(evm, PAYER_KEY, id, 10);
        vm.prank(payee);
        evm.settle(id, 10, good);
        vm.assertEq(token.balanceOf(payee), 10, "paid under its own domain");
    }

    // ================================================================ views

    function test_views_DefaultDomain() public view {
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        ) = escrow.eip712Domain();
        vm.assertEq(uint256(uint8(fields)), 0x0f, "fields");
        vm.assertEq(name, "Tempo Stream Channel", "name");
        vm.assertEq(version, "1", "version");
        vm.assertEq(chainId, block.chainid, "chainId");
        vm.assertEq(verifyingContract, address(escrow), "verifyingContract");
        vm.assertEq(salt, bytes32(0), "salt");
        vm.assertEq(extensions.length, 0, "extensions");
        vm.assertEq(uint256(escrow.CLOSE_GRACE_PERIOD()), 15 minutes, "grace");
        vm.assertEq(escrow.VOUCHER_TYPEHASH(), VECTOR_TYPEHASH, "typehash");
    }

    function test_views_CustomDomain() public {
        ISluiceEscrow custom = _deployEscrow("Sluice", "2", 3600);
        (, string memory name, string memory version,,,,) = custom.eip712Domain();
        vm.assertEq(name, "Sluice", "name");
        vm.assertEq(version, "2", "version");
        vm.assertEq(uint256(custom.CLOSE_GRACE_PERIOD()), 3600, "grace");
        vm.assertEq(
            custom.getVoucherDigest(SALT, 42),
            _expectedDigest("Sluice", "2", block.chainid, address(custom), SALT, 42),
            "digest"
        );
    }

    function testFuzz_views_DigestMatchesEip712(bytes32 channelId, uint128 amount) public view {
        vm.assertEq(
            escrow.getVoucherDigest(channelId, amount),
            _expectedDigest("Tempo Stream Channel", "1", block.chainid, address(escrow), channelId, amount),
            "digest"
        );
    }

    function test_views_UnknownChannelIsZero() public view {
        ISluiceEscrow.Channel memory c = escrow.getChannel(SALT);
        vm.assertFalse(c.finalized, "finalized");
        vm.assertEq(c.payer, address(0), "payer");
        vm.assertEq(uint256(c.deposit), 0, "deposit");
    }

    function test_views_BatchAndChannelsGetterAgree() public {
        bytes32 a = _open(DEPOSIT);
        bytes32 b = _openWith(address(token), 5, bytes32(uint256(9)), delegate);
        _settle(a, 3);
        vm.prank(payer);
        escrow.requestClose(b);
        bytes32[] memory ids = new bytes32[](3);
        ids[0] = b;
        ids[1] = SALT; // unknown
        ids[2] = a;
        ISluiceEscrow.Channel[] memory got = escrow.getChannelsBatch(ids);
        vm.assertEq(got.length, 3, "length");
        for (uint256 i; i < 3; ++i) {
            ISluiceEscrow.Channel memory one = escrow.getChannel(ids[i]);
            (bool f, uint64 cra, address p, address pe, address t, address s, uint128 d, uint128 st) =
                escrow.channels(ids[i]);
            vm.assertEq(abi.encode(got[i]), abi.encode(one), "batch == single");
            vm.assertEq(abi.encode(one), abi.encode(f, cra, p, pe, t, s, d, st), "getter == single");
        }
        vm.assertEq(got[0].authorizedSigner, delegate, "b signer");
        vm.assertEq(uint256(got[0].closeRequestedAt), START, "b close requested");
        vm.assertEq(uint256(got[2].settled), 3, "a settled");
    }

    function test_views_GetChannelAbiTupleOrder() public {
        bytes32 id = _openWith(address(token), DEPOSIT, SALT, delegate);
        _settleAs(id, 7, DELEGATE_KEY);
        vm.prank(payer);
        escrow.requestClose(id);
        // The raw return data must be the v1 tuple, field by field, in this order.
        (bool ok, bytes memory ret) = address(escrow).staticcall(abi.encodeCall(ISluiceEscrow.getChannel, (id)));
        vm.assertTrue(ok, "call");
        vm.assertEq(
            ret,
            abi.encode(false, uint64(START), payer, payee, address(token), delegate, DEPOSIT, uint128(7)),
            "tuple order"
        );
    }

    // ================================================================ mppx vectors

    /// Token at nonce 0 and escrow at nonce 1 from anvil account #0 on chain 31337 reproduce the
    /// addresses of the mppx vectors; the escrow must then produce the vectors' digests and accept
    /// the vectors' signatures.
    function test_vectors_Mppx011DigestsAndSignatures() public {
        vm.chainId(31337);
        vm.setNonce(payer, 0);
        vm.prank(payer);
        TestToken vectorToken = new TestToken("Test USD", "TUSD", 6);
        vm.prank(payer);
        ISluiceEscrow vectorEscrow = _deployEscrow("Tempo Stream Channel", "1", 15 minutes);
        vm.assertEq(address(vectorToken), VECTOR_TOKEN, "token address");
        vm.assertEq(address(vectorEscrow), VECTOR_ESCROW, "escrow address");

        vm.assertEq(vectorEscrow.domainSeparator(), VECTOR_SEPARATOR, "domain separator");
        vm.assertEq(vectorEscrow.getVoucherDigest(VECTOR_CHANNEL, 0), VECTOR_DIGEST_0, "digest 0");
        vm.assertEq(vectorEscrow.getVoucherDigest(VECTOR_CHANNEL, 250_000), VECTOR_DIGEST_250K, "digest 250k");
        vm.assertEq(
            vectorEscrow.getVoucherDigest(VECTOR_DELEGATED_CHANNEL, 250_000),
            VECTOR_DIGEST_DELEGATED,
            "digest delegated"
        );

        vectorToken.mint(payer, 2 * DEPOSIT);
        vm.prank(payer);
        vectorToken.approve(address(vectorEscrow), 2 * DEPOSIT);
        vm.prank(payer);
        bytes32 id = vectorEscrow.open(payee, address(vectorToken), DEPOSIT, VECTOR_SALT, address(0));
        vm.assertEq(id, VECTOR_CHANNEL, "channel id");
        vm.prank(payer);
        bytes32 delegatedId = vectorEscrow.open(payee, address(vectorToken), DEPOSIT, VECTOR_SALT, delegate);
        vm.assertEq(delegatedId, VECTOR_DELEGATED_CHANNEL, "delegated channel id");

        // mppx accepts v=0/1 nowhere and high-s in its own verifier; the escrow refuses both.
        vm.expectRevert(
            abi.encodeWithSelector(
                ISluiceEscrow.MalformedSignature.selector, id, ISluiceEscrow.SignatureFault.RecoveryId
            )
        );
        vm.prank(payee);
        vectorEscrow.settle(id, 250_000, VECTOR_SIG_250K_V01);
        vm.expectRevert(
            abi.encodeWithSelector(ISluiceEscrow.MalformedSignature.selector, id, ISluiceEscrow.SignatureFault.S)
        );
        vm.prank(payee);
        vectorEscrow.settle(id, 250_000, VECTOR_SIG_250K_HIGH_S);

        vm.prank(payee);
        vectorEscrow.settle(id, 250_000, VECTOR_SIG_250K);
        vm.assertEq(vectorToken.balanceOf(payee), 250_000, "mppx signature settled");

        vm.prank(payee);
        vectorEscrow.settle(delegatedId, 250_000, VECTOR_SIG_DELEGATED_COMPACT);
        vm.assertEq(vectorToken.balanceOf(payee), 500_000, "compact form of the delegated signature settled");
        vm.expectRevert(
            abi.encodeWithSelector(ISluiceEscrow.AmountNotIncreasing.selector, delegatedId, 250_000, 250_000)
        );
        vm.prank(payee);
        vectorEscrow.settle(delegatedId, 250_000, VECTOR_SIG_DELEGATED);
    }

    /// The code of an escrow placed at the mppx mainnet legacy address on chain 4217 computes the
    /// mainnet vector's digest (the separator is rebuilt when address or chain differ from deploy).
    function test_vectors_MainnetDomainIsRebuiltForAddressAndChain() public {
        vm.etch(MAINNET_LEGACY_ESCROW, address(escrow).code);
        vm.chainId(4217);
        vm.assertEq(
            ISluiceEscrow(MAINNET_LEGACY_ESCROW).getVoucherDigest(VECTOR_CHANNEL, 1_000_000),
            MAINNET_DIGEST_1M,
            "mainnet digest"
        );
    }

    // ================================================================ helpers

    function _settleAs(bytes32 id, uint128 amount, uint256 key) private {
        bytes memory sig = _sign(escrow, key, id, amount);
        vm.prank(payee);
        escrow.settle(id, amount, sig);
    }

    function _expectMalformed(bytes memory sig, ISluiceEscrow.SignatureFault fault) private {
        bytes32 id = _open(DEPOSIT);
        _expectMalformedOn(id, sig, fault);
    }

    function _expectMalformedOn(bytes32 id, bytes memory sig, ISluiceEscrow.SignatureFault fault) private {
        vm.expectRevert(abi.encodeWithSelector(ISluiceEscrow.MalformedSignature.selector, id, fault));
        vm.prank(payee);
        escrow.settle(id, 10, sig);
        _assertChannel(id, false, 0, DEPOSIT, 0, "unchanged");
    }

    function _slice(bytes memory data, uint256 len) private pure returns (bytes memory out) {
        out = new bytes(len);
        for (uint256 i; i < len; ++i) {
            out[i] = data[i];
        }
    }
}
