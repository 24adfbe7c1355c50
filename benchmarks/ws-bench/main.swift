// WebSocket load for the benchmark harness (benchmarks/run, scenario `websocket`).
//
//   ws-bench server PORT
//       A WebSocket echo server on 127.0.0.1:PORT (NIOWebSocket, one event loop): every data frame comes back.
//   ws-bench client PORT PATH CONNECTIONS SECONDS SIZE [HEADER ...]
//       CONNECTIONS connections to 127.0.0.1:PORT, each opening a WebSocket on PATH (with the given extra
//       headers) and then echoing: one SIZE-byte masked binary message out, wait for it to come back, again,
//       for SECONDS (after one second to open and settle). One event loop, like `wrk -t1`. Prints `start` when
//       the measured window opens, then one JSON line when it closes: messages (round trips), duration_us, p50_us,
//       p99_us, errors.
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

// MARK: Server

final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary, .continuation:
            let out = WebSocketFrame(fin: frame.fin, opcode: frame.opcode, data: frame.unmaskedData)
            context.write(wrapOutboundOut(out), promise: nil)
        case .connectionClose:
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: frame.unmaskedData)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in channel.close(promise: nil) }
        case .ping:
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
}

func runServer(port: Int) throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let upgrader = NIOWebSocketServerUpgrader(
        maxFrameSize: 1 << 20,
        shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
        upgradePipelineHandler: { channel, _ in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) }
        })
    let channel = try ServerBootstrap(group: group)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .serverChannelOption(.backlog, value: 1024)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { channel in
            channel.pipeline.configureHTTPServerPipeline(
                withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        }
        .bind(host: "127.0.0.1", port: port).wait()
    try channel.closeFuture.wait()
}

// MARK: Client

final class Stats: @unchecked Sendable {
    // Touched only on the client's one event loop.
    var messages = 0
    var errors = 0
    var latencies: [UInt64] = []
    var measuring = false
}

/// One connection: the handshake written by hand, then a closed loop of echoes (frames parsed by hand: the
/// server's are unmasked, the client's masked, as RFC 6455 requires).
final class EchoClient: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let path: String
    let headers: [String]
    let size: Int
    let stats: Stats
    var upgraded = false
    var buffer = ByteBuffer()
    var sentAt: UInt64 = 0
    var frame: ByteBuffer

    init(path: String, headers: [String], size: Int, stats: Stats) {
        self.path = path
        self.headers = headers
        self.size = size
        self.stats = stats
        var f = ByteBuffer()
        f.writeInteger(UInt8(0x82))
        if size < 126 {
            f.writeInteger(UInt8(0x80 | size))
        } else {
            f.writeInteger(UInt8(0x80 | 126))
            f.writeInteger(UInt16(size))
        }
        f.writeBytes([0x11, 0x22, 0x33, 0x44])
        f.writeBytes((0..<size).map { UInt8($0 & 0xff) ^ [0x11, 0x22, 0x33, 0x44][$0 % 4] })
        frame = f
    }

    func channelActive(context: ChannelHandlerContext) {
        var text = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        text += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        for h in headers { text += h + "\r\n" }
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text + "\r\n")), promise: nil)
    }

    func send(_ context: ChannelHandlerContext) {
        sentAt = DispatchTime.now().uptimeNanoseconds
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        if !upgraded {
            guard let view = buffer.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else { return }
            let head = buffer.readString(length: view.upperBound - buffer.readableBytesView.startIndex) ?? ""
            guard head.hasPrefix("HTTP/1.1 101") else {
                stats.errors += 1
                context.close(promise: nil)
                return
            }
            upgraded = true
            send(context)
        }
        while buffer.readableBytes >= 2 {
            let b1 = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self)!
            var length = Int(b1 & 0x7f)
            var headerLength = 2
            if length == 126 {
                guard buffer.readableBytes >= 4 else { return }
                length = Int(buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self)!)
                headerLength = 4
            }
            guard buffer.readableBytes >= headerLength + length else { return }
            buffer.moveReaderIndex(forwardBy: headerLength + length)
            if stats.measuring {
                stats.messages += 1
                stats.latencies.append((DispatchTime.now().uptimeNanoseconds - sentAt) / 1000)
            }
            send(context)
        }
        buffer.discardReadBytes()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        stats.errors += 1
        context.close(promise: nil)
    }
}

func runClient(port: Int, path: String, connections: Int, seconds: Int, size: Int, headers: [String]) throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let loop = group.next()
    let stats = Stats()
    var channels: [Channel] = []
    for _ in 0..<connections {
        let ch = try ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        EchoClient(path: path, headers: headers, size: size, stats: stats))
                }
            }
            .connect(host: "127.0.0.1", port: port).wait()
        channels.append(ch)
    }
    // One second to open every tunnel and settle, then the measured window.
    Thread.sleep(forTimeInterval: 1)
    let start = try loop.submit { () -> UInt64 in
        stats.measuring = true
        return DispatchTime.now().uptimeNanoseconds
    }.wait()
    // The harness reads the proxies' CPU time at this line and at the report, so the window is what it measures.
    FileHandle.standardOutput.write(Data("start\n".utf8))
    Thread.sleep(forTimeInterval: Double(seconds))
    let (messages, errors, latencies, end) = try loop.submit { () -> (Int, Int, [UInt64], UInt64) in
        stats.measuring = false
        return (stats.messages, stats.errors, stats.latencies, DispatchTime.now().uptimeNanoseconds)
    }.wait()
    for ch in channels { ch.close(promise: nil) }
    let sorted = latencies.sorted()
    func pct(_ p: Double) -> UInt64 { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
    let report =
        "{\"messages\": \(messages), \"duration_us\": \((end - start) / 1000), \"p50_us\": \(pct(0.5)), "
        + "\"p99_us\": \(pct(0.99)), \"errors\": \(errors)}\n"
    FileHandle.standardOutput.write(Data(report.utf8))
    try? group.syncShutdownGracefully()
}

let args = CommandLine.arguments
if args.count >= 3, args[1] == "server", let port = Int(args[2]) {
    try runServer(port: port)
} else if args.count >= 7, args[1] == "client", let port = Int(args[2]), let conns = Int(args[4]), let secs = Int(args[5]),
    let size = Int(args[6])
{
    try runClient(port: port, path: args[3], connections: conns, seconds: secs, size: size, headers: Array(args.dropFirst(7)))
} else {
    FileHandle.standardError.write(Data("usage: ws-bench server PORT | ws-bench client PORT PATH CONNECTIONS SECONDS SIZE [HEADER ...]\n".utf8))
    exit(2)
}
