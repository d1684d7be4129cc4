//! The global-state attributes: `#[liveupdate_flb(...)]` (upstream FLB),
//! `#[liveupdate_global_state(...)]` (the seed's handler-scoped state) and
//! `#[liveupdate_subsystem(...)]` (v4-style subsystems). On the struct they implement the ABI
//! trait of the form and (FLB, subsystem) build the generated ops table and raw struct; on
//! the impl they work as `#[vtable]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, Item, LitStr, Path};

use crate::args::{self, ArgValue};
use crate::common::{self, check_compat};
use crate::diag::Errors;
use crate::vtable::VtableSpec;

/// The impl side of an FLB.
pub const FLB_IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_flb]",
    trait_name: "FlbState",
    table: "liveupdate_flb_ops",
    required: &[
        (
            "preserve",
            "fn preserve(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)>",
        ),
        (
            "unpreserve",
            "fn unpreserve(&self, cx: &StateCtx<'_>, ser: Self::Ser, obj: Arc<Self::Outgoing>)",
        ),
        (
            "retrieve",
            "fn retrieve(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming>",
        ),
        (
            "finish",
            "fn finish(&self, cx: &StateCtx<'_>, obj: Arc<Self::Incoming>)",
        ),
    ],
    optional: &[],
    has_consts: &[],
    use_const: "USE_LIVEUPDATE_FLB_ATTR",
    type_defaults: &[],
};

/// The impl side of handler-scoped state.
pub const STATE_IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_global_state]",
    trait_name: "HandlerState",
    table: "liveupdate_fh_global_state_ops",
    required: &[
        (
            "create",
            "fn create(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)>",
        ),
        (
            "restore",
            "fn restore(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming>",
        ),
        (
            "destroy",
            "fn destroy(&self, cx: &StateCtx<'_>, obj: StateObj<Self::Outgoing, Self::Incoming>)",
        ),
    ],
    optional: &[],
    has_consts: &[],
    use_const: "USE_LIVEUPDATE_GLOBAL_STATE_ATTR",
    type_defaults: &[],
};

/// The impl side of a subsystem.
pub const SUBSYSTEM_IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_subsystem]",
    trait_name: "Subsystem",
    table: "liveupdate_subsystem_ops",
    required: &[
        (
            "prepare",
            "fn prepare(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)>",
        ),
        (
            "cancel",
            "fn cancel(&self, cx: &StateCtx<'_>, obj: Self::Outgoing)",
        ),
        (
            "boot",
            "fn boot(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming>",
        ),
        (
            "finish",
            "fn finish(&self, cx: &StateCtx<'_>, obj: Self::Incoming)",
        ),
    ],
    optional: &["freeze"],
    has_consts: &["freeze"],
    use_const: "USE_LIVEUPDATE_SUBSYSTEM_ATTR",
    type_defaults: &[],
};

#[derive(Clone, Copy, PartialEq)]
enum Form {
    Flb,
    State,
    Subsystem,
}

impl Form {
    fn attr(self) -> &'static str {
        match self {
            Form::Flb => "#[liveupdate_flb(...)]",
            Form::State => "#[liveupdate_global_state(...)]",
            Form::Subsystem => "#[liveupdate_subsystem(...)]",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            Form::Flb => &["compatible", "abi", "lock", "immediate"],
            Form::State => &["abi", "lock"],
            Form::Subsystem => &["name", "abi", "lock"],
        }
    }
}

struct Model {
    ident: Ident,
    name: Option<LitStr>,
    abi: Option<Path>,
    lock: Option<Path>,
    /// FLB only: the data word is the 8-byte value itself (`immediate`).
    immediate: bool,
}

fn parse(
    form: Form,
    args: TokenStream,
    item: &Item,
    errors: &mut Errors,
) -> Option<(syn::ItemStruct, Model)> {
    let s = common::expect_struct(item, form.attr(), errors)?;
    let raw = match args::parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    let args = args::check_keys(raw, form.keys(), form.attr(), errors);
    let mut m = Model {
        ident: s.ident.clone(),
        name: None,
        abi: None,
        lock: None,
        immediate: false,
    };
    let name_given = args
        .iter()
        .any(|a| a.key == "compatible" || a.key == "name");
    let abi_given = args.iter().any(|a| a.key == "abi");
    for a in &args {
        match a.key.to_string().as_str() {
            "compatible" | "name" => m.name = args::lit_str(a, errors),
            "abi" => m.abi = args::path(a, errors),
            "lock" => m.lock = args::path(a, errors),
            "immediate" => match a.value {
                ArgValue::Flag => m.immediate = true,
                _ => errors.at(
                    a.key.span(),
                    "`immediate` is a flag: write `immediate`, without a value",
                ),
            },
            _ => {}
        }
    }
    match form {
        Form::Flb => match &m.name {
            Some(c) => check_compat(c, "the FLB compatible string", Some("liveupdate_flb.compatible"), errors),
            None if name_given => {}
            None => errors.at(
                Span::call_site(),
                "#[liveupdate_flb(...)] needs `compatible = \"name-vN\"`: the string written to luo_flb_ser.name",
            ),
        },
        Form::Subsystem => match &m.name {
            Some(c) => check_compat(c, "the subsystem name", None, errors),
            None if name_given => {}
            None => errors.at(
                Span::call_site(),
                "#[liveupdate_subsystem(...)] needs `name = \"...\"`: the subsystem's unique name, which also names its handover data",
            ),
        },
        Form::State => {}
    }
    if m.abi.is_none() && !abi_given {
        errors.at(
            Span::call_site(),
            format!(
                "{} needs `abi = path::to::Type`: the ABI struct the state hands over",
                form.attr()
            ),
        );
    }
    Some((s, m))
}

/// Expands `#[liveupdate_flb(...)]` on a struct.
pub fn expand_flb(args: TokenStream, item: Item) -> TokenStream {
    expand(Form::Flb, args, item)
}

/// Expands `#[liveupdate_global_state(...)]` on a struct.
pub fn expand_state(args: TokenStream, item: Item) -> TokenStream {
    expand(Form::State, args, item)
}

/// Expands `#[liveupdate_subsystem(...)]` on a struct.
pub fn expand_subsystem(args: TokenStream, item: Item) -> TokenStream {
    expand(Form::Subsystem, args, item)
}

fn expand(form: Form, args: TokenStream, item: Item) -> TokenStream {
    let mut errors = Errors::new();
    let Some((s, m)) = parse(form, args, &item, &mut errors) else {
        let e = errors.to_compile_errors();
        return quote!(#item #e);
    };
    let ok = errors.is_empty();
    let body = match (form, m.abi.is_some()) {
        (_, false) => quote!(),
        (Form::Flb, _) => flb(&m, ok),
        (Form::State, _) => state(&m),
        (Form::Subsystem, _) => subsystem(&m, ok),
    };
    let errs = errors.to_compile_errors();
    quote! {
        #s
        #errs
        #body
    }
}

fn decode_fn() -> TokenStream {
    let v = common::validate(quote!(ser));
    quote! {
        fn decode(ser: Self::Ser) -> ::luo_abi::Result<Self::Ser> {
            #v
            ::core::result::Result::Ok(ser)
        }
    }
}

fn flb(m: &Model, ok: bool) -> TokenStream {
    let ident = &m.ident;
    let abi = &m.abi;
    let immediate = m.immediate;
    // An immediate FLB's ABI type is the data word itself.
    let size_check = match (&m.abi, immediate) {
        (Some(abi), true) => quote_spanned! {abi.span()=>
            const _: () = ::core::assert!(
                ::core::mem::size_of::<#abi>() == 8,
                "an `immediate` FLB hands over its data word itself: `abi` must be an 8-byte type such as u64",
            );
        },
        _ => quote!(),
    };
    let lock = common::lock_path(&m.lock);
    let compat = m.name.as_ref().map_or(String::new(), LitStr::value);
    let decode = decode_fn();
    let raw = if ok {
        quote! {
            __lu::liveupdate_flb {
                ops: &__LUO_FLB_OPS,
                compatible: ::luo_abi::abi::compat_bytes(#compat),
            }
        }
    } else {
        quote!(::core::unreachable!())
    };
    let table = if ok {
        quote! {
            const __LUO_FLB_OPS: __lu::liveupdate_flb_ops = __lu::liveupdate_flb_ops {
                preserve: ::core::option::Option::Some(__luo_flb_preserve),
                unpreserve: ::core::option::Option::Some(__luo_flb_unpreserve),
                retrieve: ::core::option::Option::Some(__luo_flb_retrieve),
                finish: ::core::option::Option::Some(__luo_flb_finish),
                owner: ::core::ptr::null_mut(),
            };
            unsafe extern "C" fn __luo_flb_preserve(argp: *mut __lu::liveupdate_flb_op_args) -> ::core::ffi::c_int {
                // SAFETY: the core passes valid op args for this FLB's cell.
                unsafe {
                    let a = &mut *argp;
                    ::luo_abi::global::rt::flb_preserve::<#ident>(a.flb.cast(), &mut a.data, &mut a.obj)
                }
            }
            unsafe extern "C" fn __luo_flb_unpreserve(argp: *mut __lu::liveupdate_flb_op_args) {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &*argp;
                    ::luo_abi::global::rt::flb_unpreserve::<#ident>(a.flb.cast(), a.data)
                }
            }
            unsafe extern "C" fn __luo_flb_retrieve(argp: *mut __lu::liveupdate_flb_op_args) -> ::core::ffi::c_int {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &mut *argp;
                    ::luo_abi::global::rt::flb_retrieve::<#ident>(a.flb.cast(), a.data, &mut a.obj)
                }
            }
            unsafe extern "C" fn __luo_flb_finish(argp: *mut __lu::liveupdate_flb_op_args) {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &*argp;
                    ::luo_abi::global::rt::flb_finish::<#ident>(a.flb.cast())
                }
            }
        }
    } else {
        quote!()
    };
    quote! {
        const _: () = {
            use ::luo_generated::liveupdate as __lu;

            impl ::luo_abi::global::Global for #ident {
                type Cell = ::luo_abi::global::FlbCell<#ident>;
                const FORM: ::luo_abi::global::GlobalStateForm = ::luo_abi::global::GlobalStateForm::Flb;
            }

            // SAFETY: `raw` is the generated struct over the ops table below, whose
            // trampolines call the luo_abi runtime for this type.
            unsafe impl ::luo_abi::global::FlbAbi for #ident {
                type Ser = #abi;
                type Raw = __lu::liveupdate_flb;
                type Lock = #lock;
                const COMPATIBLE: &'static str = #compat;
                const IMMEDIATE: bool = #immediate;
                fn raw() -> Self::Raw {
                    #raw
                }
                #decode
            }
            #size_check
            #table
        };
    }
}

fn state(m: &Model) -> TokenStream {
    let ident = &m.ident;
    let abi = &m.abi;
    let lock = common::lock_path(&m.lock);
    let decode = decode_fn();
    quote! {
        const _: () = {
            // SAFETY: the ops table is built by #[liveupdate_handler] of the handler that
            // declares this state, over the luo_abi runtime.
            unsafe impl ::luo_abi::global::HandlerStateAbi for #ident {
                type Ser = #abi;
                type Lock = #lock;
                #decode
            }
            // SAFETY: declared with #[liveupdate_global_state].
            unsafe impl ::luo_abi::global::DeclaredState for #ident {}
        };
    }
}

fn subsystem(m: &Model, ok: bool) -> TokenStream {
    let ident = &m.ident;
    let abi = &m.abi;
    let lock = common::lock_path(&m.lock);
    let name = m.name.as_ref().map_or(String::new(), LitStr::value);
    let cname = format!("{name}\0");
    let decode = decode_fn();
    let raw = if ok {
        quote! {
            __lu::liveupdate_subsystem {
                ops: &__LUO_SUBSYSTEM_OPS,
                name: #cname.as_ptr(),
            }
        }
    } else {
        quote!(::core::unreachable!())
    };
    let table = if ok {
        quote! {
            const __LUO_SUBSYSTEM_OPS: __lu::liveupdate_subsystem_ops = __lu::liveupdate_subsystem_ops {
                prepare: ::core::option::Option::Some(__luo_sub_prepare),
                freeze: if <#ident as ::luo_abi::global::Subsystem>::HAS_FREEZE {
                    ::core::option::Option::Some(__luo_sub_freeze)
                } else {
                    ::core::option::Option::None
                },
                cancel: ::core::option::Option::Some(__luo_sub_cancel),
                boot: ::core::option::Option::Some(__luo_sub_boot),
                finish: ::core::option::Option::Some(__luo_sub_finish),
                owner: ::core::ptr::null_mut(),
            };
            unsafe extern "C" fn __luo_sub_prepare(handle: *mut __lu::liveupdate_subsystem, data: *mut u64) -> ::core::ffi::c_int {
                // SAFETY: the core passes this subsystem's cell and a valid out-pointer.
                unsafe { ::luo_abi::global::rt::sub_prepare::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_freeze(handle: *mut __lu::liveupdate_subsystem, data: *mut u64) -> ::core::ffi::c_int {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_freeze::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_cancel(handle: *mut __lu::liveupdate_subsystem, data: u64) {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_cancel::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_boot(handle: *mut __lu::liveupdate_subsystem, data: u64) {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_boot::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_finish(handle: *mut __lu::liveupdate_subsystem, data: u64) {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_finish::<#ident>(handle.cast(), data) }
            }
        }
    } else {
        quote!()
    };
    quote! {
        const _: () = {
            use ::luo_generated::liveupdate as __lu;

            impl ::luo_abi::global::Global for #ident {
                type Cell = ::luo_abi::global::SubsystemCell<#ident>;
                const FORM: ::luo_abi::global::GlobalStateForm = ::luo_abi::global::GlobalStateForm::Subsystem;
            }

            // SAFETY: `raw` is the generated struct over the ops table below, whose
            // trampolines call the luo_abi runtime for this type.
            unsafe impl ::luo_abi::global::SubsystemAbi for #ident {
                type Ser = #abi;
                type Raw = __lu::liveupdate_subsystem;
                type Lock = #lock;
                const NAME: &'static str = #name;
                fn raw() -> Self::Raw {
                    #raw
                }
                #decode
            }
            #table
        };
    }
}
