import Foundation
import RelayTestHarness

struct DemoScenario {
    static let keptPrefix = "rdemo-"
    var keep: Bool
    func run() throws {
        let lab = try Lab("demo", prefix: keep ? DemoScenario.keptPrefix : nil)
        defer { if !keep { lab.teardown() } }
        print("Relay demo: building two sites that both use 192.168.1.0/24 ...")
        let a = try lab.host("siteA_host"), ga = try lab.host("siteA_gw"), u = try lab.host("underlay")
        let gb = try lab.host("siteB_gw"), b = try lab.host("siteB_host")
        try lab.link(a, "eth0", ["192.168.1.20/24"], ga, "lan0", ["192.168.1.1/24"])
        try lab.link(b, "eth0", ["192.168.1.20/24"], gb, "lan0", ["192.168.1.1/24"])
        try lab.link(ga, "wan0", ["10.10.10.10/24"], u, "a0", ["10.10.10.1/24"])
        try lab.link(gb, "wan0", ["10.20.20.20/24"], u, "b0", ["10.20.20.1/24"])
        for g in [ga, gb, u] { try g.enableForwarding() }
        try a.route("default", via: "192.168.1.1")
        try b.route("default", via: "192.168.1.1")
        try ga.route("default", via: "10.10.10.1")
        try gb.route("default", via: "10.20.20.1")
        let ping = try ga.run(["ping", "-c1", "-W1", "10.20.20.20"], check: false)
        print("gateway A reaches gateway B over the underlay: \(ping.succeeded ? "yes" : "no")")
    }
}
