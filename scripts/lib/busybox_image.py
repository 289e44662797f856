#!/usr/bin/env python3
"""Makes a busybox image from Debian's busybox-static, for scripts that need
an image without a registry on the internet: one layer with the static
binary and a symbolic link per applet.

  busybox_image.py --layout DIR   an OCI image layout directory (tag "latest")
  busybox_image.py --tar FILE     a tar that is both an OCI layout and a
                                  `docker save` archive (RepoTags busybox:latest)
"""
import argparse, datetime, hashlib, io, json, os, subprocess, tarfile

BUSYBOX = "/bin/busybox"


def layer_tar():
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        binary = open(BUSYBOX, "rb").read()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(binary), 0o755
        t.addfile(info, io.BytesIO(binary))
        applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True).stdout.decode().split()
        for applet in sorted(set(applets) - {"busybox"}):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        t.addfile(info, io.BytesIO(passwd))
    return raw.getvalue()


def blobs():
    """(name -> bytes, manifest digest, config digest, layer digest)."""
    files = {}

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        files[f"blobs/sha256/{digest}"] = data
        return {"digest": f"sha256:{digest}", "size": len(data)}

    raw = layer_tar()
    layer = put(raw)
    layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
    # When Debian built the binary: the same bytes on every run.
    created = datetime.datetime.fromtimestamp(os.path.getmtime(BUSYBOX), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")
    config = put(json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "created": created,
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        # One entry per layer: builders (buildah) check the two agree.
        "history": [{"created": created, "created_by": "busybox-static from Debian"}],
    }).encode())
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = put(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    }).encode())
    manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "latest",
                               "io.containerd.image.name": "docker.io/library/busybox:latest"}
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    files["manifest.json"] = json.dumps([{
        "Config": f"blobs/sha256/{config['digest'][7:]}",
        "RepoTags": ["busybox:latest"],
        "Layers": [f"blobs/sha256/{layer['digest'][7:]}"],
    }]).encode()
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--layout")
    group.add_argument("--tar")
    args = parser.parse_args()
    files = blobs()
    if args.layout:
        for name, data in files.items():
            if name == "manifest.json":
                continue
            path = os.path.join(args.layout, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    else:
        tmp = args.tar + ".tmp"
        with tarfile.open(tmp, "w") as t:
            for name in sorted(files):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(files[name]), 0o644
                t.addfile(info, io.BytesIO(files[name]))
        os.replace(tmp, args.tar)


if __name__ == "__main__":
    main()
