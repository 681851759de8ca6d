"""svsm.sdk.abi -- the module ABI (hazardous layer: frames and codecs).

Module authors use :class:`svsm.sdk.Syscalls` and the hooks; the kernel and the SDK runtime use this.
The reference is ``docs/abi.md``, generated from these Structs.
"""

from ._channel import AbiError as AbiError
from ._channel import Channel as Channel
from ._channel import ChannelStatistics as ChannelStatistics
from ._channel import FrameTooLarge as FrameTooLarge
from ._channel import MalformedFrame as MalformedFrame
from ._channel import NEED_DATA as NEED_DATA
from ._channel import CLOSED as CLOSED
from ._channel import FRAME_HEADER as FRAME_HEADER
from ._channel import Recorder as Recorder
from ._messages import ABI_MAJOR as ABI_MAJOR
from ._messages import ABI_MINOR as ABI_MINOR
from ._messages import MAX_FRAME as MAX_FRAME
from ._messages import MAX_BUFFER as MAX_BUFFER
from ._messages import MAX_BLOB as MAX_BLOB
from ._messages import MAX_KEY as MAX_KEY
from ._messages import MAX_TEXT as MAX_TEXT
from ._messages import MAX_LIST as MAX_LIST
from ._messages import MAX_RANDOM as MAX_RANDOM
from ._messages import KernelMessage as KernelMessage
from ._messages import ModuleMessage as ModuleMessage
from ._messages import KERNEL_MESSAGES as KERNEL_MESSAGES
from ._messages import MODULE_MESSAGES as MODULE_MESSAGES
from ._messages import GrantInfo as GrantInfo
from ._messages import Hello as Hello
from ._messages import Start as Start
from ._messages import Stop as Stop
from ._messages import SaveState as SaveState
from ._messages import RestoreState as RestoreState
from ._messages import ManifestRequest as ManifestRequest
from ._messages import StorageRequest as StorageRequest
from ._messages import CallRequest as CallRequest
from ._messages import Command as Command
from ._messages import SyscallReply as SyscallReply
from ._messages import ErrorFrame as ErrorFrame
from ._messages import HelloAck as HelloAck
from ._messages import HookResult as HookResult
from ._messages import SandboxReport as SandboxReport
from ._messages import ManifestReport as ManifestReport
from ._messages import CallResult as CallResult
from ._messages import SysLog as SysLog
from ._messages import SysRandom as SysRandom
from ._messages import SysTime as SysTime
from ._messages import SysStorageGet as SysStorageGet
from ._messages import SysStoragePut as SysStoragePut
from ._messages import SysStorageDelete as SysStorageDelete
from ._messages import SysStorageList as SysStorageList
from ._messages import SysReport as SysReport
from ._messages import SysDerivedKey as SysDerivedKey
from ._messages import SysGrantMap as SysGrantMap
from ._messages import SysGrantWrite as SysGrantWrite
from ._messages import SysGrantUnmap as SysGrantUnmap
from ._messages import SysDiskRead as SysDiskRead
from ._messages import SysDiskWrite as SysDiskWrite
from ._messages import SysDiskFlush as SysDiskFlush
from ._messages import SysDiskSize as SysDiskSize
from ._messages import SysService as SysService
from ._messages import SYSCALLS as SYSCALLS
from ._messages import KernelUnion as KernelUnion
from ._messages import ModuleUnion as ModuleUnion

__all__ = [
    "ABI_MAJOR",
    "ABI_MINOR",
    "AbiError",
    "CLOSED",
    "CallRequest",
    "CallResult",
    "Channel",
    "Command",
    "ChannelStatistics",
    "ErrorFrame",
    "FRAME_HEADER",
    "FrameTooLarge",
    "GrantInfo",
    "Hello",
    "HelloAck",
    "HookResult",
    "KERNEL_MESSAGES",
    "KernelMessage",
    "KernelUnion",
    "MAX_BLOB",
    "MAX_BUFFER",
    "MAX_FRAME",
    "MAX_KEY",
    "MAX_LIST",
    "MAX_RANDOM",
    "MAX_TEXT",
    "MODULE_MESSAGES",
    "MalformedFrame",
    "ManifestReport",
    "ManifestRequest",
    "ModuleMessage",
    "ModuleUnion",
    "NEED_DATA",
    "Recorder",
    "RestoreState",
    "SYSCALLS",
    "SandboxReport",
    "SaveState",
    "Start",
    "Stop",
    "StorageRequest",
    "SysDerivedKey",
    "SysDiskFlush",
    "SysDiskRead",
    "SysDiskSize",
    "SysDiskWrite",
    "SysGrantMap",
    "SysGrantUnmap",
    "SysGrantWrite",
    "SysLog",
    "SysRandom",
    "SysReport",
    "SysService",
    "SysStorageDelete",
    "SysStorageGet",
    "SysStorageList",
    "SysStoragePut",
    "SysTime",
    "SyscallReply",
]
