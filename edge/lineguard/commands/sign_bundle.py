"""``lineguard sign-bundle BUNDLE --key KEY.pem`` and ``lineguard sign-bundle --generate-key KEY.pem``.

Off the frame path: runs where bundles are released (training side or release pipeline). Signs
the exact bytes of ``manifest.json`` (which lists every file's sha256) with Ed25519 and writes
``manifest.sig``. ``--generate-key`` writes a new private key (0600, never overwritten) and prints
the public key line for ``changeover.trusted_keys``.

Never: sign a bundle whose hashes do not verify (that would bless a changed file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lineguard.bundle import load_bundle
from lineguard.changeover.signing import generate_key, load_private_key, public_key_text, sign_bundle

HELP = "sign a bundle's manifest with Ed25519 (or --generate-key a signing key)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", nargs="?", help="bundle directory to sign")
    p.add_argument("--key", help="Ed25519 private key (PEM) to sign with")
    p.add_argument("--generate-key", metavar="PATH", help="write a new private key here and print its public key")


def run(args: argparse.Namespace) -> int:
    if args.generate_key:
        try:
            key = generate_key(Path(args.generate_key))
        except FileExistsError:
            print(f"{args.generate_key} exists; refusing to overwrite a signing key")
            return 1
        print(f"private key written to {args.generate_key} (mode 0600; keep it off the edge boxes)")
        print("add this line under changeover.trusted_keys in line.yaml:")
        print(f"  - {public_key_text(key)}")
        return 0
    if not args.bundle or not args.key:
        print("give BUNDLE and --key KEY.pem (or --generate-key PATH)")
        return 2
    bundle = load_bundle(args.bundle)  # every hash must verify before we vouch for it
    key = load_private_key(Path(args.key))
    out = sign_bundle(Path(args.bundle), key)
    print(f"signed {bundle.bundle_id} with key {public_key_text(key)} -> {out}")
    return 0
