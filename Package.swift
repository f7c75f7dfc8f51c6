// swift-tools-version:6.0
import PackageDescription

// Layout and rules of the house: ../shared/DESIGN.md.
// Pure modules (RelayCore, RelayWire, RelayHelperAPI) import neither NIO nor C.
// relay-helper links only what it needs: never the data plane or the control API.
// The packet path's modules skip the dynamic exclusivity checks in release builds (about 2% of a
// core per Gbit/s in profiles); debug builds, which the tests run, keep them.
let packetPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "Relay",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "relay-helper", targets: ["relay-helper"]),
        .executable(name: "relayd", targets: ["relayd"]),
        .executable(name: "relayctl", targets: ["relayctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        // C
        .systemLibrary(name: "CNetfilter", pkgConfig: "libnftnl",
                       providers: [.apt(["libnftnl-dev", "libmnl-dev"])]),
        .target(name: "CRelayShim"),
        // ChaCha20-Poly1305 into caller buffers through the system's libcrypto (OpenSSL 3): the
        // tunnel's per-packet AEAD without allocation.
        .target(name: "CRelayCrypto", linkerSettings: [.linkedLibrary("crypto")]),

        // Pure
        .target(name: "RelayCore", swiftSettings: packetPath),
        .target(name: "RelayWire", dependencies: ["RelayCore"]),
        .target(name: "RelayHelperAPI", dependencies: ["RelayCore", "RelayWire"]),
        .target(name: "RelayControlAPI", dependencies: ["RelayCore", "RelayWire"]),
        // Peer sessions: Noise IK handshake, WireGuard-style transport, replay window, timers.
        .target(name: "RelayTunnel", dependencies: [
            "RelayCore", "CRelayCrypto", .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: [.swiftLanguageMode(.v5)] + packetPath),
        // relayd's configuration (TOML): shared by relayd and relayctl (config check, explain).
        .target(name: "RelayConfig", dependencies: [
            "RelayCore", .product(name: "TOMLKit", package: "TOMLKit"),
        ]),

        // Kernel and I/O
        .target(name: "RelayNetlink", dependencies: ["RelayCore", "CRelayShim"]),
        .target(name: "RelayNftables", dependencies: ["RelayCore", "RelayNetlink", "CNetfilter"]),
        .target(name: "RelayIPC", dependencies: ["RelayWire", "RelayHelperAPI", "CRelayShim"]),

        // Programs' kits
        .target(name: "RelayHelperKit", dependencies: [
            "RelayCore", "RelayWire", "RelayHelperAPI", "RelayIPC", "RelayNetlink", "RelayNftables",
            .product(name: "TOMLKit", package: "TOMLKit"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The TLS front door (HTTP/1.1 and HTTP/2 with extended CONNECT, WebSocket): routes plug in.
        .target(name: "RelayFrontDoor", dependencies: [
            "RelayCore", "RelayControlAPI",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOWebSocket", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        // A relay's durable state (SQLite through GRDB): callsigns, device admission.
        .target(name: "RelayStore", dependencies: ["RelayCore", .product(name: "GRDB", package: "GRDB.swift")]),
        .target(name: "RelayDaemonKit", dependencies: [
            "RelayCore", "RelayWire", "RelayHelperAPI", "RelayControlAPI", "RelayConfig", "RelayIPC", "CRelayShim", "RelayTunnel", "RelayFrontDoor", "RelayStore",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
        ], swiftSettings: [.swiftLanguageMode(.v5)] + packetPath),
        .target(name: "RelayCtlKit", dependencies: [
            "RelayCore", "RelayWire", "RelayControlAPI", "RelayConfig", "RelayIPC", "RelayNftables", "CRelayShim",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
        ]),

        // Executables (thin)
        .executableTarget(name: "relay-helper", dependencies: [
            "RelayHelperKit",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "relayd", dependencies: [
            "RelayDaemonKit",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "relayctl", dependencies: ["RelayCtlKit"]),

        // Fuzzing: the decoders that face the network or the privilege boundary, as functions of
        // bytes (RelayFuzzTargets), and relay-fuzz, which runs them under libFuzzer (`make fuzz`) or
        // replays files through them.
        .target(name: "RelayFuzzTargets", dependencies: [
            "RelayCore", "RelayWire", "RelayHelperAPI", "RelayHelperKit", "RelayTunnel", "RelayConfig",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "CRelayFuzzDriver"),
        .executableTarget(name: "relay-fuzz", dependencies: ["RelayFuzzTargets", "CRelayFuzzDriver"]),

        // Test support: the network-namespace lab (kernel tier, demo, benchmarks).
        .target(name: "RelayTestHarness", dependencies: ["CRelayShim"],
                swiftSettings: [.swiftLanguageMode(.v5)]),
        .executableTarget(name: "relay-lab", dependencies: [
            "RelayTestHarness", "RelayCore", "RelayIPC", "RelayNftables", "CRelayCrypto", "CRelayShim", "RelayTunnel",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: [.swiftLanguageMode(.v5)]),

        // Three tiers: unit (no root), component (real sockets, no root), kernel (root, netns).
        .testTarget(name: "RelayUnitTests", dependencies: [
            "RelayCore", "RelayWire", "RelayHelperAPI", "RelayNftables", "RelayNetlink", "RelayHelperKit", "RelayCtlKit",
            "RelayConfig", "RelayControlAPI", "RelayDaemonKit", "RelayTunnel", "CRelayCrypto", "RelayFuzzTargets", "RelayStore",
            "RelayFrontDoor", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOWebSocket", package: "swift-nio"),
        ], exclude: ["Golden"],  // read by path (#filePath), not bundled
        swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "RelayComponentTests", dependencies: [
            "RelayCore", "RelayWire", "RelayHelperAPI", "RelayIPC", "RelayHelperKit", "RelayTestHarness", "RelayControlAPI", "RelayTunnel",
            "RelayDaemonKit", "RelayConfig", "CRelayShim", .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "RelayKernelTests", dependencies: [
            "RelayCore", "RelayHelperAPI", "RelayIPC", "RelayNftables", "RelayNetlink", "RelayHelperKit", "RelayTestHarness", "RelayControlAPI",
        ], swiftSettings: [.swiftLanguageMode(.v5)]),
    ]
)
