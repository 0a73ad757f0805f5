#!/usr/bin/env python3
"""Write a single-layer OCI image archive (an OCI image layout in a tar), byte for byte the
same for the same inputs: every timestamp is 0, owners are numeric, entries are sorted and
gzip carries no name or time. Used for the images of the local cluster's own infrastructure
(the sandbox image) and of test fixtures; the product's images are built from their
Containerfiles by `make images`.

  oci-image.py --ref NAME:TAG --out ARCHIVE --file SRC=/DEST[:MODE] ... \
      [--entrypoint /DEST] [--arg X ...] [--user UID:GID]
"""
import argparse
import gzip
import hashlib
import io
import json
import tarfile


def tar_bytes(entries):
    """entries: list of (TarInfo, bytes|None), written sorted by name with zero times."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in sorted(entries, key=lambda e: e[0].name):
            info.mtime = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def layer(files):
    entries, dirs = [], set()
    for src, dest, mode in files:
        parts = dest.strip("/").split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        with open(src, "rb") as f:
            data = f.read()
        info = tarfile.TarInfo(dest.strip("/"))
        info.size, info.mode = len(data), mode
        entries.append((info, data))
    for d in dirs:
        info = tarfile.TarInfo(d)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        entries.append((info, None))
    return tar_bytes(entries)


def blob(data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(data)}, data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ref", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--file", action="append", default=[], required=True)
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--arg", action="append", default=[])
    p.add_argument("--user", default="")
    a = p.parse_args()

    files = []
    for spec in a.file:
        src, _, rest = spec.partition("=")
        dest, _, mode = rest.partition(":")
        files.append((src, dest, int(mode, 8) if mode else 0o755))
    diff = layer(files)
    compressed = gzip.compress(diff, compresslevel=9, mtime=0)
    layer_desc, layer_data = blob(compressed, "application/vnd.oci.image.layer.v1.tar+gzip")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": a.entrypoint or None, "Cmd": a.arg or None, "User": a.user or None},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "e2e/node/oci-image.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v}
    enc = lambda o: json.dumps(o, sort_keys=True, separators=(",", ":")).encode()
    config_desc, config_data = blob(enc(config), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc, manifest_data = blob(enc(manifest), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": a.ref,
                                    "io.containerd.image.name": a.ref}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    entries = []
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        entries.append((info, data))
    for desc, data in ((layer_desc, layer_data), (config_desc, config_data), (manifest_desc, manifest_data)):
        add("blobs/sha256/" + desc["digest"].split(":")[1], data)
    for d in ("blobs", "blobs/sha256"):
        info = tarfile.TarInfo(d)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        entries.append((info, None))
    add("oci-layout", enc({"imageLayoutVersion": "1.0.0"}))
    add("index.json", enc(index))
    with open(a.out, "wb") as f:
        f.write(tar_bytes(entries))
    print(f"{a.ref} {manifest_desc['digest']}")


if __name__ == "__main__":
    main()
