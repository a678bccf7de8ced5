"""UEFI device paths (UEFI 2.10, 10.3 "Device Path Nodes") to their text form (10.6).

Formatting never fails: a node this module does not know, or bytes that do
not form a node, are shown in the generic ``Path(type,subtype,hex)`` form.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid

END_TYPE = 0x7F
END_ENTIRE = 0xFF
END_INSTANCE = 0x01


def _guid(data: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(data[:16])))


def _utf16(data: bytes) -> str:
    text = data.decode("utf-16-le", errors="replace")
    return text.split("\x00", 1)[0]


_BBS_TYPES = {1: "Floppy", 2: "HD", 3: "CDROM", 4: "PCMCIA", 5: "USB", 6: "Network"}


def _ipv4(address: bytes) -> str:
    return str(ipaddress.IPv4Address(address))


def _protocol(number: int) -> str:
    return {6: "TCP", 17: "UDP"}.get(number, f"0x{number:x}")


def _node_text(node_type: int, subtype: int, body: bytes) -> str | None:
    size = len(body)
    if node_type == 0x01:  # hardware
        if subtype == 0x01 and size == 2:
            return f"Pci(0x{body[1]:x},0x{body[0]:x})"
        if subtype == 0x04 and size >= 16:
            extra = f",{body[16:].hex()}" if size > 16 else ""
            return f"VenHw({_guid(body)}{extra})"
    elif node_type == 0x02:  # ACPI
        if subtype == 0x01 and size == 8:
            hid, uid = struct.unpack("<II", body)
            if hid == 0x0A0341D0:
                return f"PciRoot(0x{uid:x})"
            if hid == 0x0A0841D0:
                return f"PcieRoot(0x{uid:x})"
            return f"Acpi(0x{hid:08x},0x{uid:x})"
    elif node_type == 0x03:  # messaging
        if subtype == 0x02 and size == 4:
            target, lun = struct.unpack("<HH", body)
            return f"SCSI({target},{lun})"
        if subtype == 0x05 and size == 2:
            return f"USB({body[0]},{body[1]})"
        if subtype == 0x0B and size == 33:
            return f"MAC({body[:6].hex()},{body[32]})"
        if subtype == 0x0C and size == 15:  # UEFI 2.0 form, without gateway and mask
            local, remote, _lp, _rp, protocol, static = struct.unpack_from("<4s4sHHHB", body)
            return (
                f"IPv4({_ipv4(remote)},{_protocol(protocol)},{'Static' if static else 'DHCP'},"
                f"{_ipv4(local)})"
            )
        if subtype == 0x0C and size == 23:
            local, remote, _lp, _rp, protocol, static = struct.unpack_from("<4s4sHHHB", body)
            gateway, mask = body[15:19], body[19:23]
            return (
                f"IPv4({_ipv4(remote)},{_protocol(protocol)},{'Static' if static else 'DHCP'},"
                f"{_ipv4(local)},{_ipv4(gateway)},{_ipv4(mask)})"
            )
        if subtype == 0x0D and size == 56:
            local, remote, _lp, _rp, protocol, origin, prefix = struct.unpack_from(
                "<16s16sHHHBB", body
            )
            gateway = body[40:56]
            source = {0: "Static", 1: "StatelessAutoConfigure", 2: "StatefulAutoConfigure"}.get(
                origin, f"0x{origin:x}"
            )
            return (
                f"IPv6({ipaddress.IPv6Address(remote)},{_protocol(protocol)},{source},"
                f"{ipaddress.IPv6Address(local)},0x{prefix:x},{ipaddress.IPv6Address(gateway)})"
            )
        if subtype == 0x12 and size == 6:
            port, multiplier, lun = struct.unpack("<HHH", body)
            return f"Sata({port},{multiplier},{lun})"
        if subtype == 0x17 and size == 12:
            namespace, eui = struct.unpack("<I8s", body)
            return f"NVMe(0x{namespace:x},{'-'.join(f'{b:02X}' for b in eui)})"
        if subtype == 0x18 and size >= 0:
            return f"Uri({body.decode('ascii', errors='replace')})"
    elif node_type == 0x05:  # BIOS boot specification
        if subtype == 0x01 and size >= 4:
            device_type, status = struct.unpack_from("<HH", body)
            description = body[4:].split(b"\x00", 1)[0].decode("ascii", errors="replace")
            device = _BBS_TYPES.get(device_type, f"0x{device_type:x}")
            return f"BBS({device},{description},0x{status:x})"
    elif node_type == 0x04:  # media
        if subtype == 0x01 and size == 38:
            number, start, length = struct.unpack_from("<IQQ", body)
            signature, fmt, kind = body[20:36], body[36], body[37]
            if kind == 0x02:
                return (
                    f"HD({number},GPT,{_guid(signature)},0x{start:x},0x{length:x})"
                    if fmt == 0x02
                    else None
                )
            if kind == 0x01:
                mbr = int.from_bytes(signature[:4], "little")
                return f"HD({number},MBR,0x{mbr:x},0x{start:x},0x{length:x})"
        if subtype == 0x04:
            return f"File({_utf16(body)})"
        if subtype == 0x06 and size == 16:
            return f"FvFile({_guid(body)})"
        if subtype == 0x07 and size == 16:
            return f"FvVol({_guid(body)})"
        if subtype == 0x08 and size == 20:
            _reserved, start, end = struct.unpack("<IQQ", body)
            return f"Offset(0x{start:x},0x{end:x})"
    return None


def format_device_path(data: bytes) -> str:
    """The text form of a device path, e.g. ``PciRoot(0x0)/Pci(0x1,0x0)/HD(...)/File(...)``."""
    parts: list[str] = []
    offset = 0
    while offset + 4 <= len(data):
        node_type, subtype, length = struct.unpack_from("<BBH", data, offset)
        if length < 4 or offset + length > len(data):
            parts.append(f"Path(0x{node_type:x},0x{subtype:x},{data[offset + 4 :].hex()})")
            return "/".join(parts)
        body = data[offset + 4 : offset + length]
        offset += length
        if node_type == END_TYPE:
            if subtype == END_INSTANCE:
                parts.append(",")
                continue
            break
        text = _node_text(node_type, subtype, body)
        parts.append(text if text is not None else f"Path({node_type},{subtype},{body.hex()})")
    return "/".join(parts).replace("/,/", ",")
