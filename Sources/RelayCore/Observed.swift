/// What the kernel holds in the helper's table, read back over netlink (never a guess).
public struct ObservedTable: Codable, Equatable, Sendable {
    public var family: String
    public var name: String
    public var exists: Bool
    public var chains: [ObservedChain]
    public var sets: [ObservedSet]
    public init(family: String, name: String, exists: Bool, chains: [ObservedChain] = [], sets: [ObservedSet] = []) {
        self.family = family; self.name = name; self.exists = exists; self.chains = chains; self.sets = sets
    }
}

public struct ObservedChain: Codable, Equatable, Sendable {
    public var name: String
    public var hook: String?
    public var priority: Int32?
    public var rules: [ObservedRule]
    public init(name: String, hook: String?, priority: Int32?, rules: [ObservedRule]) {
        self.name = name; self.hook = hook; self.priority = priority; self.rules = rules
    }
}

public struct ObservedRule: Codable, Equatable, Sendable {
    public var handle: UInt64
    public var comment: String?
    public var packets: UInt64
    public var bytes: UInt64
    public init(handle: UInt64, comment: String?, packets: UInt64, bytes: UInt64) {
        self.handle = handle; self.comment = comment; self.packets = packets; self.bytes = bytes
    }
}

public struct ObservedSet: Codable, Equatable, Sendable {
    public var name: String
    public var isMap: Bool
    public var isInterval: Bool
    /// Entries as an operator counts them (an interval is one entry, not its two kernel elements).
    public var entries: Int
    public init(name: String, isMap: Bool, isInterval: Bool, entries: Int) {
        self.name = name; self.isMap = isMap; self.isInterval = isInterval; self.entries = entries
    }
}

/// What an apply did.
public struct ApplyReport: Codable, Equatable, Sendable {
    /// False when the kernel already held exactly the wanted state and no batch was sent.
    public var changed: Bool
    public var messages: Int
    public var bytes: Int
    public var rewrittenChains: [String]
    public var replacedSets: [String]
    public var removedSets: [String]
    /// Kernel elements added or deleted (an interval is two elements).
    public var changedElements: Int
    /// Routes replaced and deleted, devices created or changed (route/device requests).
    public var routesChanged: Int
    public var devicesChanged: Int
    public init(changed: Bool, messages: Int, bytes: Int, rewrittenChains: [String] = [], replacedSets: [String] = [], removedSets: [String] = [],
                changedElements: Int = 0, routesChanged: Int = 0, devicesChanged: Int = 0) {
        self.changed = changed; self.messages = messages; self.bytes = bytes
        self.rewrittenChains = rewrittenChains; self.replacedSets = replacedSets; self.removedSets = removedSets
        self.changedElements = changedElements; self.routesChanged = routesChanged; self.devicesChanged = devicesChanged
    }
}
