// swift-tools-version:6.1
import PackageDescription

/// Release builds of our own modules skip dynamic exclusivity checks (they show up on the proxy's hot path);
/// debug builds, which run the tests, keep them.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "gatehouse",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "gatehouse", targets: ["gatehouse"]),
        .library(name: "Gateway", targets: ["Gateway"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    ],
    targets: [
        // Thin C modules (STYLE 1). Later issues import them; CI installs their -dev packages from the start.
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CJWT", pkgConfig: "libjwt", providers: [.apt(["libjwt-dev"])]),

        // HTTP/1.x wire format: the request parser of the client side. No dependencies (a fuzz target builds it alone).
        .target(name: "HTTPWire", swiftSettings: hotPath),
        // Pure decisions: config model and validation, routing, problem documents. No sockets.
        .target(
            name: "Policy",
            dependencies: ["CJWT", "HTTPWire", .product(name: "Yams", package: "Yams")],
            swiftSettings: hotPath
        ),
        // Targets, balancing, health, the pooled HTTP/1.1 client and header rewriting. Knows nothing of tenants.
        .target(
            name: "Upstream",
            dependencies: [
                "Policy",
                "HTTPWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: hotPath
        ),
        // The Redis client: hiredis on NIO, standalone, Sentinel and Cluster topologies, per-node circuit
        // breakers. Knows nothing of tenants; Gateway composes it.
        .target(
            name: "Redis",
            dependencies: [
                "CHiredis",
                "Upstream",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: hotPath
        ),
        // The NIO server and request pipeline, admin listener, lifecycle.
        .target(
            name: "Gateway",
            dependencies: [
                "Policy",
                "Upstream",
                "Redis",
                "HTTPWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
            ],
            swiftSettings: hotPath
        ),
        .executableTarget(
            name: "gatehouse",
            dependencies: [
                "Gateway",
                "Policy",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Micro-benchmark of JWT verification, cached and uncached (benchmarks/run builds and runs it).
        .executableTarget(name: "jwt-bench", dependencies: ["Policy"], path: "benchmarks/jwt-bench"),
        // WebSocket echo server and closed-loop client for the harness's `websocket` scenario.
        .executableTarget(
            name: "ws-bench",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            path: "benchmarks/ws-bench"
        ),
        .testTarget(name: "PolicyTests", dependencies: ["Policy"]),
        .testTarget(name: "HTTPWireTests", dependencies: ["HTTPWire"]),
        .testTarget(
            name: "UpstreamTests",
            dependencies: [
                "Upstream", "Policy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "Policy", "Upstream", "Redis", "HTTPWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            // Real WebSocket peers (Python `websockets`) and an OTLP receiver (`opentelemetry-proto`), run by the live tests.
            exclude: ["Support/ws_upstream.py", "Support/ws_client.py", "Support/otlp_receiver.py"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
